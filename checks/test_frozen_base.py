from lora_harness.verdicts.frozen_base import CHECK, evaluate_frozen_base


def test_frozen_base(adapter, harness, record_check):
    """Compares the base with the session's first digests after rendering, here (the adapter's other checks,
    collected before it, rendered what they needed), and after unloading: once the adapter's last check ran, the
    verdict is taken again (plugin.py's pytest_runtest_teardown). An adapter that changed the base gets it restored
    on unloading, and fails."""

    def verdict():
        stages = {}
        if harness.after_training is not None:
            stages["after the reference's training"] = harness.after_training
        stages.update(adapter.stages)
        trainable = harness.reference_run.trainable if adapter.spec.is_reference else None
        return evaluate_frozen_base(adapter.name, len(harness.watch.digests), stages, trainable)

    def evaluate():
        harness.renders(adapter)
        harness.record_stage(adapter, "after rendering")
        return verdict()

    result = harness.run_check(adapter, CHECK, evaluate)
    if adapter.application is not None:
        harness.after_unloading(adapter, CHECK, verdict, result)
    record_check(adapter, result)
