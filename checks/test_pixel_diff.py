from lora_harness.verdicts.pixel_diff import CHECK, evaluate_pixel_diff


def test_pixel_diff(adapter, harness, record_check):
    def evaluate():
        result = evaluate_pixel_diff(
            adapter.name,
            adapted=harness.renders(adapter),
            base=harness.renders(None),
            base_again=harness.base_renders_again(),
            floor=harness.config.diff_floor,
            tolerance=harness.config.determinism_tolerance,
            nonfinite_tensors=adapter.application.nonfinite,
        )
        result.details["pictures"] = harness.save_pictures(adapter)
        return result

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
