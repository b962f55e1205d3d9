from lora_harness.verdicts.clip_heldout import CHECK, evaluate_clip_heldout
from lora_harness.verdicts.results import SKIPPED, CheckResult


def test_clip_heldout(adapter, harness, record_check):
    def evaluate():
        clip, why_not = harness.features.clip
        if clip is None:
            return CheckResult(adapter.name, CHECK, SKIPPED, message=why_not)

        def renders(prompts):
            return harness.renders(None, prompts=prompts), harness.renders(adapter, prompts=prompts)

        captions = harness.training_captions(adapter)
        return evaluate_clip_heldout(
            adapter.name, clip, list(harness.config.heldout_prompts), captions, renders, harness.config.clip_margin
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
