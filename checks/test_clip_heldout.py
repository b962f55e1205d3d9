from lora_harness.verdicts.clip_heldout import CHECK, evaluate_clip_heldout, training_captions
from lora_harness.verdicts.results import SKIPPED, CheckResult


def test_clip_heldout(adapter, harness, record_check):
    def evaluate():
        clip, why_not = harness.features.clip
        if clip is None:
            return CheckResult(adapter.name, CHECK, SKIPPED, message=why_not)

        def renders(prompts):
            return harness.renders(None, prompts=prompts), harness.renders(adapter, prompts=prompts)

        metadata = adapter.record.get("metadata") or {}
        captions = training_captions(harness.config.train_captions, metadata, adapter.spec.is_reference)
        return evaluate_clip_heldout(
            adapter.name, clip, list(harness.config.heldout_prompts), captions, renders, harness.config.clip_margin
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
