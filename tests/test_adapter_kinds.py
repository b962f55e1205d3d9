"""Adapter kinds beyond plain LoRA, as users run them through the plugin: DoRA (PEFT's `use_dora`) and LyCORIS
LoHa and LoKr files written by LyCORIS itself, applied through peft's own tuners."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import FAST, MECHANICAL, records, results


def test_a_kohya_dora_file_lands_whole_with_its_magnitudes(pytester, tmp_path):
    """LyCORIS's DoRA (`dora_wd`) in Kohya's layout keeps each magnitude as a [out, 1] `dora_scale`; diffusers'
    `load_lora_weights` drops those keys with a warning and applies a plain LoRA, which the proof would catch."""
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    pipeline = build_tiny_pipeline()
    dora = write_lycoris(pipeline, tmp_path / "kohya-dora.safetensors", "lora", dora_wd=True)
    pytester.runpytest_inprocess("--adapter", dora, *FAST, *MECHANICAL).assert_outcomes(passed=5)
    adapter = results(pytester)["adapters"][0]
    assert (adapter["format"], adapter["kind"]) == ("kohya", "DoRA")
    assert adapter["tensors_applied"] == adapter["tensors"] == 3 * (32 + 8)  # down, up, magnitude per module
    per_input = write_lycoris(
        pipeline, tmp_path / "dora-per-input.safetensors", "lora", dora_wd=True, wd_on_output=False
    )
    pytester.runpytest_inprocess("--adapter", per_input, *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = records(pytester)[("dora-per-input.safetensors", "wiring")]["message"]
    assert "a scale per input channel (LyCORIS `wd_on_output=False`)" in message


def test_a_dora_adapter_passes_the_mechanical_checks_with_its_magnitudes_proven(pytester, tiny_unet, tmp_path):
    from lora_harness.fixtures.adapter_writers import write_dora_folder
    from lora_harness.verdicts.wiring import DORA_SCALE_ZERO

    dora = write_dora_folder(tiny_unet, tmp_path / "dora")
    pytester.runpytest_inprocess("--adapter", dora, *FAST, *MECHANICAL).assert_outcomes(passed=5)
    adapter = results(pytester)["adapters"][0]
    assert adapter["kind"] == "DoRA" and adapter["tensors_applied"] == adapter["tensors"] == 3 * 32
    wiring = records(pytester)[("dora", "wiring")]["details"]
    # At scale 0 DoRA still rescales by its magnitudes: the control says so instead of failing or passing silently.
    assert wiring["scale_zero_control"] == DORA_SCALE_ZERO and wiring["scale_zero_mean_abs_diff"] > 0.5


@pytest.fixture(scope="module")
def lycoris_files(tmp_path_factory):
    """LoHa rank 4 / alpha 8 and LoKr at rank 4 (both Kronecker factors full) and rank 2 (w2 decomposed), on the
    attention of the tiny U-Net and its text encoder, as `--network_module lycoris.kohya` saves them."""
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    folder = tmp_path_factory.mktemp("lycoris")
    pipeline = build_tiny_pipeline()
    return {
        "loha": write_lycoris(pipeline, folder / "loha.safetensors", "loha", rank=4, alpha=8),
        "lokr": write_lycoris(pipeline, folder / "lokr.safetensors", "lokr", rank=4, alpha=8),
        "lokr-r2": write_lycoris(pipeline, folder / "lokr-r2.safetensors", "lokr", rank=2, alpha=8),
    }


def test_lycoris_loha_and_lokr_files_land_whole_at_lycoris_scale_and_pass(pytester, lycoris_files):
    adapters = [a for path in lycoris_files.values() for a in ("--adapter", path)]
    # LoHa pays two rank-4 pairs per module: 3.8% of the tiny U-Net, over the 2% default.
    pytester.runpytest_inprocess(*adapters, *FAST, *MECHANICAL, "--param-budget", "5%").assert_outcomes(passed=3 * 5)
    applied = {a["name"].removesuffix(".safetensors"): a for a in results(pytester)["adapters"]}
    modules = 32 + 8  # attention projections of the U-Net and the text encoder
    assert applied["loha"]["tensors_applied"] == applied["loha"]["tensors"] == 4 * modules
    assert applied["lokr"]["tensors_applied"] == applied["lokr"]["tensors"] == 2 * modules
    assert applied["lokr-r2"]["tensors_applied"] == applied["lokr-r2"]["tensors"] > 2 * modules  # some w2 split in two
    assert (applied["loha"]["kind"], applied["lokr"]["kind"]) == ("LoHa", "LoKr")
    assert {a["format"] for a in applied.values()} == {"lycoris"} and {a["family"] for a in applied.values()} == {
        "tiny SD1.x"
    }
    # LyCORIS's scales: alpha / rank; 1 where both Kronecker factors are full; alpha / rank for a split w2.
    assert (applied["loha"]["scale"], applied["lokr"]["scale"], applied["lokr-r2"]["scale"]) == (2.0, 1.0, 4.0)


def test_a_lycoris_file_that_does_not_fit_the_base_fails_wiring(pytester, lycoris_files, tmp_path):
    tensors = load_file(lycoris_files["loha"])
    first = sorted(k for k in tensors if k.endswith(".hada_w1_b"))[0]
    tensors[first] = torch.randn(4, 31)
    misspelled = sorted(k for k in tensors if "attn1_to_q" in k)[:5]
    tensors.update({k.replace("attn1_to_q", "attn1_to_query"): tensors.pop(k) for k in misspelled})
    save_file(tensors, tmp_path / "unfit.safetensors")
    pytester.runpytest_inprocess("--adapter", tmp_path / "unfit.safetensors", *FAST, "-k", "wiring").assert_outcomes(
        failed=1
    )
    message = records(pytester)[("unfit.safetensors", "wiring")]["message"]
    assert "keys match no module" in message and "attn1_to_query" in message
    module = first.partition(".")[0]
    assert f"tensors whose module LyCORIS could not build, first {module}." in message
    assert (
        "LyCORIS could not build its LoHa module on this Linear" in message and "(32)" in message and "(31)" in message
    )


def test_a_lycoris_file_whose_factors_are_zero_fails_weight_health(pytester, lycoris_files, tmp_path):
    """Trained LoHa moves both Hadamard factors; a file whose second factor is still all zero changes nothing."""
    tensors = load_file(lycoris_files["loha"])
    tensors.update({k: torch.zeros_like(v) for k, v in tensors.items() if k.endswith(".hada_w2_a")})
    save_file(tensors, tmp_path / "untrained-loha.safetensors")
    pytester.runpytest_inprocess(
        "--adapter", tmp_path / "untrained-loha.safetensors", *FAST, "-k", "weight_health"
    ).assert_outcomes(failed=1)
    message = records(pytester)[("untrained-loha.safetensors", "weight_health")]["message"]
    assert "40 of 40 modules (100%) have ΔW ≈ 0" in message


def test_sdxl_lycoris_files_land_on_the_unet_and_both_text_encoders(pytester, tmp_path):
    from lora_harness.bases.tiny_base import build_tiny_sdxl_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris

    pipeline = build_tiny_sdxl_pipeline()
    adapters = [write_lycoris(pipeline, tmp_path / f"sdxl-{algo}.safetensors", algo) for algo in ("loha", "lokr")]
    given = [a for path in adapters for a in ("--adapter", path)]
    result = pytester.runpytest_inprocess(
        *given, "--base-model", "tiny-sdxl", *FAST, *MECHANICAL, "--param-budget", "10%"
    )
    result.assert_outcomes(passed=2 * 5)
    modules = 64 + 8 + 8  # the SDXL-shaped U-Net's attention projections and each text encoder's
    for adapter in results(pytester)["adapters"]:
        per_module = 4 if adapter["kind"] == "LoHa" else 2
        assert adapter["tensors_applied"] == adapter["tensors"] == per_module * modules
        assert adapter["family"] == "tiny SDXL"
