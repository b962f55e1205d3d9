from lora_harness.verdicts.pixel_diff import CHECK, evaluate_pixel_diff, save_pictures


def test_pixel_diff(adapter, harness, record_check):
    def evaluate():
        adapted, base = harness.renders(adapter), harness.renders(None)
        result = evaluate_pixel_diff(
            adapter.name,
            adapted=adapted,
            base=base,
            base_again=harness.base_renders_again(),
            floor=harness.config.diff_floor,
            tolerance=harness.config.determinism_tolerance,
            nonfinite_tensors=adapter.application.nonfinite,
        )
        result.details["pictures"] = save_pictures(harness.config.report_dir, adapter.spec.slot, base, adapted)
        return result

    record_check(adapter, harness.run_check(adapter, CHECK, evaluate))
