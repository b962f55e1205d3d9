from lora_harness.verdicts.mode_collapse import CHECK, evaluate_mode_collapse
from lora_harness.verdicts.results import SKIPPED, CheckResult


def test_mode_collapse(adapter, harness, record_check):
    def evaluate():
        clip, why_not = harness.features.clip
        if clip is None:
            return CheckResult(adapter.name, CHECK, SKIPPED, message=why_not)
        config = harness.config
        heldout = harness.renders(adapter, prompts=config.heldout_prompts) if config.train_images else None
        return evaluate_mode_collapse(
            adapter.name,
            clip,
            harness.renders(None),
            harness.renders(adapter),
            config.diversity_floor,
            harness.train_images,
            config.copy_similarity,
            heldout,
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
