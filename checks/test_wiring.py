from lora_harness.verdicts.wiring import CHECK, evaluate_wiring


def test_wiring(adapter, harness, record_check):
    def evaluate():
        return evaluate_wiring(
            adapter.name,
            adapter.application,
            adapted=harness.renders(adapter),
            at_scale_zero=harness.renders(adapter, scale=0.0),
            base=harness.renders(None),
            tolerance=harness.config.scale_zero_tolerance,
        )

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
