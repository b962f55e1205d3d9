"""Adapter kinds beyond plain LoRA, as users run them through the plugin: DoRA (PEFT's `use_dora`)."""

from tests.test_families import FAST, MECHANICAL
from tests.test_plugin import results
from tests.test_quality import _results as records


def test_a_dora_adapter_passes_the_mechanical_checks_with_its_magnitudes_proven(pytester, tiny_unet, tmp_path):
    from lora_harness.fixtures.adapter_writers import write_dora_folder
    from lora_harness.wiring import DORA_SCALE_ZERO

    dora = write_dora_folder(tiny_unet, tmp_path / "dora")
    pytester.runpytest_inprocess("--adapter", dora, *FAST, *MECHANICAL).assert_outcomes(passed=5)
    adapter = results(pytester)["adapters"][0]
    assert adapter["kind"] == "DoRA" and adapter["tensors_applied"] == adapter["tensors"] == 3 * 32
    wiring = records(pytester)[("dora", "wiring")]["details"]
    # At scale 0 DoRA still rescales by its magnitudes: the control says so instead of failing or passing silently.
    assert wiring["scale_zero_control"] == DORA_SCALE_ZERO and wiring["scale_zero_mean_abs_diff"] > 0.5

