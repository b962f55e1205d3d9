"""Model families beyond SD1.x as users run them: the embedded SDXL-shaped base (two text encoders, added
conditioning) with adapters in Kohya (`lora_te1_`/`lora_te2_`) and diffusers layouts, an SD2.x-shaped folder
(1024-wide text states, v-prediction), their reference overfits, and each one's wrong-family control both ways."""

import pytest

from tests.test_plugin import results
from tests.test_quality import _results as records

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
MECHANICAL = ("-k", "wiring or frozen_base or param_budget or pixel_diff or weight_health")
SDXL_TENSORS = 2 * (64 + 8 + 8)  # A and B of 64 U-Net projections and 8 per text encoder


@pytest.fixture(scope="module")
def sdxl_adapters(tmp_path_factory):
    from lora_harness.fixtures.adapter_writers import (
        make_pipeline_lora,
        write_diffusers_components,
        write_kohya_components,
    )
    from lora_harness.tiny_base import build_tiny_sdxl_pipeline

    folder = tmp_path_factory.mktemp("sdxl-adapters")
    loras = make_pipeline_lora(build_tiny_sdxl_pipeline(), seed=1)
    return {
        "kohya": write_kohya_components(loras, folder / "kohya.safetensors", 4, 8),
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8),
    }


def test_sdxl_adapters_in_each_layout_pass_with_their_text_encoders_proven(pytester, sdxl_adapters):
    adapters = [a for path in sdxl_adapters.values() for a in ("--adapter", path)]
    # At tiny widths rank 4 on both text encoders and the U-Net is 2.7% of the U-Net: above the 2% default.
    result = pytester.runpytest_inprocess(*adapters, "--base-model", "tiny-sdxl", *FAST, *MECHANICAL, "--param-budget", "5%")
    result.assert_outcomes(passed=2 * 5)
    document = results(pytester)
    assert document["base"]["family"] == "tiny (SDXL-shaped)"
    for adapter in document["adapters"]:
        assert adapter["tensors_applied"] == adapter["tensors"] == SDXL_TENSORS
        assert adapter["family"] == "tiny SDXL" and adapter["scale"] == 2.0  # alpha 8 / rank 4, in every component
    assert {a["format"] for a in document["adapters"]} == {"kohya", "diffusers"}


def test_an_sd1_adapter_on_sdxl_and_an_sdxl_adapter_on_sd1_fail_wiring_naming_both(pytester, sdxl_adapters, write_lora):
    sd1 = write_lora("kohya", "sd1.safetensors")
    pytester.runpytest_inprocess("--adapter", sd1, "--base-model", "tiny-sdxl", *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = records(pytester)[("sd1.safetensors", "wiring")]["message"]
    assert "made for tiny (cross-attention 32), but the base is tiny SDXL (cross-attention 64)" in message
    pytester.runpytest_inprocess("--adapter", sdxl_adapters["kohya"], *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = records(pytester)[("kohya.safetensors", "wiring")]["message"]
    assert "made for tiny SDXL (cross-attention 64), but the base is tiny (cross-attention 32)" in message


def test_the_reference_overfit_trains_on_sdxl_and_its_controls_hold(pytester):
    """Rank-4 LoRA on the SDXL U-Net's attention, trained with its pooled text and size conditioning."""
    args = ("--adapter", "reference", "--base-model", "tiny-sdxl", "--render-seeds", "1", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess(*args, "-k", "wiring or pixel_diff or frozen_base").assert_outcomes(passed=3)
    document = results(pytester)
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    reference = document["adapters"][0]
    assert reference["tensors_applied"] == reference["tensors"] == 2 * 64



@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """An SD2.x-shaped folder and adapters for it in Kohya, diffusers (U-Net and text encoder) and PEFT layouts."""
    from diffusers import StableDiffusionPipeline

    from lora_harness.fixtures.adapter_writers import (
        make_pipeline_lora,
        write_adapter,
        write_diffusers_components,
        write_kohya_components,
    )
    from lora_harness.fixtures.family_bases import build_sd2_folder

    folder = tmp_path_factory.mktemp("sd2")
    base = build_sd2_folder(folder / "base")
    loras = make_pipeline_lora(StableDiffusionPipeline.from_pretrained(base), seed=1)
    adapters = {
        "kohya": write_kohya_components(loras, folder / "kohya.safetensors", 4, 8),
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8),
        "peft": write_adapter("peft", loras["unet"], folder / "peft", 4, 4),
    }
    return base, adapters


def test_sd2_adapters_in_each_layout_and_the_v_prediction_reference_pass(pytester, sd2):
    base, adapters = sd2
    given = [a for path in adapters.values() for a in ("--adapter", path)]
    args = ("--base-model", base, "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
    # The 1024-wide text encoder's LoRA alone is 4% of this tiny U-Net.
    result = pytester.runpytest_inprocess("--adapter", "reference", *given, *args, *MECHANICAL, "--param-budget", "10%")
    result.assert_outcomes(passed=4 * 5)
    document = results(pytester)
    assert document["base"]["family"] == "SD2.x"
    # The reference overfit learned the velocity target, or its positive control could not beat the negative one.
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    applied = {a["format"]: a for a in document["adapters"]}
    assert {a["family"] for a in document["adapters"]} == {"SD2.x"}
    assert applied["kohya"]["tensors_applied"] == applied["kohya"]["tensors"] == 2 * (32 + 4)  # U-Net, text encoder
    assert applied["diffusers"]["scale"] == applied["kohya"]["scale"] == 2.0


def test_an_sd1_adapter_on_sd2_and_an_sd2_adapter_on_sd1_fail_wiring_naming_both(pytester, sd2, write_lora):
    base, adapters = sd2
    sd1 = write_lora("kohya", "sd1.safetensors")
    pytester.runpytest_inprocess("--adapter", sd1, "--base-model", base, *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = records(pytester)[("sd1.safetensors", "wiring")]["message"]
    assert "made for tiny (cross-attention 32), but the base is SD2.x (cross-attention 1024)" in message
    pytester.runpytest_inprocess("--adapter", adapters["peft"], *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = records(pytester)[("peft", "wiring")]["message"]
    assert "made for SD2.x (cross-attention 1024), but the base is tiny (cross-attention 32)" in message
