from lora_harness.frozen import CHECK, evaluate_frozen_base


def test_frozen_base(adapter, harness, record_check):
    """Runs last for its adapter: it renders, unloads, and compares every stage's digests with the first."""

    def evaluate():
        harness.renders(adapter)
        harness.record_stage(adapter, "after rendering")
        harness.unload(adapter.spec)
        stages = {}
        if harness.after_training_digests is not None:
            stages["after the reference's training"] = harness.after_training_digests
        stages.update(adapter.stage_digests)
        trainable = harness.reference_run.trainable if adapter.spec.is_reference else None
        return evaluate_frozen_base(adapter.name, harness.base_digests, stages, trainable)

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate, uses_renders=False))
