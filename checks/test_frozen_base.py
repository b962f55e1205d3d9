from lora_harness.verdicts.frozen_base import CHECK, evaluate_frozen_base


def test_frozen_base(adapter, harness, record_check):
    """Runs last for its adapter: it renders, unloads, and compares the base at every stage with the session's
    first digests (an adapter that changed it gets it restored on unloading, and fails here)."""

    def evaluate():
        harness.renders(adapter)
        harness.record_stage(adapter, "after rendering")
        harness.unload(adapter.spec)
        stages = {}
        if harness.after_training is not None:
            stages["after the reference's training"] = harness.after_training
        stages.update(adapter.stages)
        trainable = harness.reference_run.trainable if adapter.spec.is_reference else None
        return evaluate_frozen_base(adapter.name, len(harness.watch.digests), stages, trainable)

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
