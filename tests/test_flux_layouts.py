"""Flux LoRAs in the community's layouts (Kohya's sd-scripts, ComfyUI, XLabs), which name Flux's original fused
modules: diffusers splits them and bakes alpha into the values, so each module's update is proven against what
lands in its layers, with the scale measured rather than read back."""

from contextlib import contextmanager

import pytest
import torch

from tests.helpers import FAST, MECHANICAL, records, results, wiring_failure

KOHYA_SINGLE = ("linear2", "modulation.lin")  # linear1 needs Flux.1's widths (see the test on them)


@pytest.fixture(scope="module")
def tiny_flux():
    from lora_harness.bases.tiny_base import build_tiny_flux_pipeline

    return build_tiny_flux_pipeline()


@pytest.fixture(scope="module")
def community(tiny_flux, tmp_path_factory):
    from lora_harness.fixtures.adapter_writers import write_flux_community

    folder = tmp_path_factory.mktemp("flux-community")
    return {
        "kohya": write_flux_community(
            tiny_flux, folder / "kohya.safetensors", "kohya", single=KOHYA_SINGLE, text_encoder=True
        ),
        "comfyui": write_flux_community(
            tiny_flux, folder / "comfyui.safetensors", "comfyui", single=KOHYA_SINGLE, text_encoder=True
        ),
        "xlabs": write_flux_community(tiny_flux, folder / "xlabs.safetensors", "xlabs", single=("linear1", "linear2")),
    }


@contextmanager
def applied(pipeline, path):
    """The file applied to the module-scoped pipeline, and taken off it again whatever the test asserts."""
    from lora_harness.bases.families import pipeline_signature
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.kinds import apply_adapter
    from lora_harness.loading.peft_injection import remove_adapter

    application = apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(path), "under-test")
    try:
        yield application
    finally:
        remove_adapter(pipeline, "under-test")


def test_kohya_comfyui_and_xlabs_files_pass_with_every_fused_module_proven(pytester, community):
    adapters = [a for path in community.values() for a in ("--adapter", path)]
    # Every linear of the blocks (MLPs and modulations too) at rank 4 is 4.6% of a transformer this small.
    budget = ("--param-budget", "5%")
    pytester.runpytest_inprocess(*adapters, "--base-model", "tiny-flux", *FAST, *MECHANICAL, *budget).assert_outcomes(
        passed=3 * 5
    )
    applied = {a["format"]: a for a in results(pytester)["adapters"]}
    assert set(applied) == {"kohya-flux", "comfyui-flux", "xlabs-flux"}
    # Kohya and ComfyUI: 10 modules of the double block, 2 of the single one, CLIP's 4 attention projections in 2 layers.
    assert applied["kohya-flux"]["tensors_applied"] == applied["kohya-flux"]["tensors"] == 2 * (10 + 2 + 8)
    assert applied["comfyui-flux"]["tensors_applied"] == applied["comfyui-flux"]["tensors"] == 2 * (10 + 2 + 8)
    assert applied["xlabs-flux"]["tensors_applied"] == applied["xlabs-flux"]["tensors"] == 2 * (4 + 2)
    # alpha 2 / rank 4, baked into the values by diffusers and measured back; XLabs keeps no alpha.
    assert applied["kohya-flux"]["scale"] == pytest.approx(0.5, rel=1e-6) and applied["xlabs-flux"][
        "scale"
    ] == pytest.approx(1.0)
    assert {a["family"] for a in applied.values()} == {"tiny Flux"}
    health = records(pytester)[("kohya.safetensors", "weight_health")]["details"]["modules"]
    fused = {m["module"]: m["block"] for m in health if "+" in m["module"]}
    assert fused == {
        "transformer.transformer_blocks.0.attn.to_q+to_k+to_v": "double/attn",
        "transformer.transformer_blocks.0.attn.add_q_proj+add_k_proj+add_v_proj": "double/attn-text",
    }


def test_fused_modules_written_as_stacked_separate_loras_and_bf16_files_are_proven(tiny_flux, tmp_path):
    """diffusers takes another path for a block-diagonal up (it chunks the down); a bf16 file's baked values round."""
    from lora_harness.fixtures.adapter_writers import write_flux_community

    stacked = write_flux_community(
        tiny_flux, tmp_path / "stacked.safetensors", rank=2, single=KOHYA_SINGLE, stacked=True
    )
    with applied(tiny_flux, stacked) as application:
        assert application.tensors_applied == application.tensors and not application.scale_mismatches
        assert application.scales["transformer.transformer_blocks.0.attn.to_q"] == pytest.approx(2.0 / 6)  # rank 3 × 2
    bf16 = write_flux_community(
        tiny_flux, tmp_path / "bf16.safetensors", alpha=3.0, single=KOHYA_SINGLE, dtype=torch.bfloat16
    )
    with applied(tiny_flux, bf16) as application:
        assert application.tensors_applied == application.tensors and not application.scale_mismatches
        assert application.scale == pytest.approx(0.75, rel=1e-3)


def _edited(path, out, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, out)
    return out


def test_xlabs_keys_under_diffusion_model_and_a_module_with_a_zero_update_are_proven(tiny_flux, community, tmp_path):
    prefixed = _edited(
        community["xlabs"],
        tmp_path / "prefixed.safetensors",
        lambda t: t.update({f"diffusion_model.{k}": t.pop(k) for k in list(t)}),
    )
    with applied(tiny_flux, prefixed) as application:
        assert application.format == "xlabs-flux" and application.tensors_applied == application.tensors == 12
    qkv = "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"
    zero = _edited(
        community["kohya"], tmp_path / "zero.safetensors", lambda t: t.update({qkv: torch.zeros_like(t[qkv])})
    )
    with applied(tiny_flux, zero) as application:
        assert application.tensors_applied == application.tensors and not application.scale_mismatches


def test_the_final_modulation_swaps_halves_as_diffusers_does():
    """BFL's final modulation is (shift, scale), diffusers' (scale, shift): its update's rows are swapped."""
    from diffusers.loaders.lora_conversion_utils import swap_scale_shift

    from lora_harness.loading.flux_layouts import FluxModule

    update = torch.arange(24.0).reshape(8, 3)
    module = FluxModule("d", "u", 1.0, "transformer", ("norm_out.linear",), swapped_halves=True)
    assert torch.equal(module.split(update, [8])[0], swap_scale_shift(update))
    assert torch.equal(FluxModule("d", "u", 1.0, "transformer", ("proj_out",)).split(update, [8])[0], update)


def test_the_update_inner_product_from_factors_matches_the_dense_one():
    from lora_harness.loading.proof import _inner

    generator = torch.Generator().manual_seed(0)
    up1, down1 = (
        torch.randn(40, 4, generator=generator, dtype=torch.float64),
        torch.randn(4, 30, generator=generator, dtype=torch.float64),
    )
    up2, down2 = (
        torch.randn(40, 6, generator=generator, dtype=torch.float64),
        torch.randn(6, 30, generator=generator, dtype=torch.float64),
    )
    assert _inner(up1, down1, up2, down2) == pytest.approx(float(((up1 @ down1) * (up2 @ down2)).sum()), rel=1e-12)


QKV_UP = "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"


@pytest.mark.parametrize(
    ("rows", "wanted"),
    [
        (
            285,
            "1 shapes disagree, first lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight: base needs (288, 4), file has (285, 4)",
        ),
        (287, "diffusers' Flux conversion failed on it (RuntimeError: split_with_sizes"),
    ],
)
def test_a_fused_module_with_rows_that_do_not_split_into_its_layers_is_named(
    tiny_flux, community, tmp_path, rows, wanted
):
    """285 rows split in three (95 each) for diffusers but not into the base's 96-wide q, k, v; 287 do not split at all."""
    from lora_harness.loading.adapter_file import AdapterLoadError
    from lora_harness.loading.application import file_defects

    path = _edited(
        community["kohya"], tmp_path / "rows.safetensors", lambda t: t.update({QKV_UP: t[QKV_UP][:rows].contiguous()})
    )
    try:
        with applied(tiny_flux, path) as application:
            message = " ".join(file_defects(path, application))
            assert application.tensors_applied == application.tensors - 2  # the module's down does not land alone
    except AdapterLoadError as error:
        message = str(error)
    assert wanted in message and str(path) in message


def test_t5_keys_diffusers_drops_are_refused_naming_them(tiny_flux, community, tmp_path):
    from lora_harness.loading.adapter_file import AdapterLoadError

    t5 = "lora_te3_encoder_block_0_layer_0_SelfAttention_q"
    path = _edited(
        community["kohya"],
        tmp_path / "t5.safetensors",
        lambda t: t.update({f"{t5}.lora_down.weight": torch.ones(4, 32), f"{t5}.lora_up.weight": torch.ones(32, 4)}),
    )
    with pytest.raises(AdapterLoadError, match=f"2 tensors that diffusers' Flux loader does not apply, first {t5}"):
        with applied(tiny_flux, path):
            pass


def test_a_bf16_file_whose_scale_lands_two_percent_off_fails(tiny_flux, tmp_path, monkeypatch):
    """bf16 rounding moves the measured scale by about 0.02%; a 2% error in the scale is a defect, not rounding."""
    from lora_harness.fixtures.adapter_writers import write_flux_community
    from lora_harness.loading.kinds import flux_fused

    def two_percent_off(tensors, convert=flux_fused.convert):
        return {k: v * 1.02 if ".lora_B." in k else v for k, v in convert(tensors).items()}

    monkeypatch.setattr(flux_fused, "convert", two_percent_off)
    path = write_flux_community(
        tiny_flux, tmp_path / "bf16.safetensors", alpha=3.0, single=KOHYA_SINGLE, dtype=torch.bfloat16
    )
    with applied(tiny_flux, path) as application:
        assert application.tensors_applied == application.tensors  # proportional: values right, scale wrong
        assert application.scale_mismatches and application.scale_mismatches[0][2] == pytest.approx(
            0.75 * 1.02, rel=1e-3
        )


def _dropping_alpha(convert):
    return lambda tensors: convert({k: v for k, v in tensors.items() if not k.endswith(".alpha")})


def _swapping_q_and_k(convert):
    def swapped(tensors):
        converted = convert(tensors)
        q, k = (f"transformer.transformer_blocks.0.attn.to_{p}.lora_B.weight" for p in "qk")
        converted[q], converted[k] = converted[k], converted[q]
        return converted

    return swapped


@pytest.mark.parametrize(
    ("conversion", "wanted"),
    [
        (
            _dropping_alpha,
            "24 layers apply another scale than the file declares, first transformer.transformer_blocks.0.norm1.linear: file alpha/rank = 0.5, applied 1",
        ),
        (_swapping_q_and_k, "with their values: lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"),
    ],
)
def test_a_conversion_that_loses_the_scale_or_misplaces_rows_fails_wiring(
    pytester, community, monkeypatch, conversion, wanted
):
    from lora_harness.loading.kinds import flux_fused

    monkeypatch.setattr(flux_fused, "convert", conversion(flux_fused.convert))
    assert wanted in wiring_failure(pytester, community["kohya"], "tiny-flux")


def test_modules_outside_the_blocks_that_diffusers_drops_fail_wiring(pytester, tiny_flux, tmp_path):
    """Measured with diffusers 0.42.1: its Kohya-Flux conversion names `img_in`, `final_layer`, … without the
    `transformer.` prefix, and `load_lora_weights` then skips them without a word."""
    from lora_harness.fixtures.adapter_writers import write_flux_community

    path = write_flux_community(
        tiny_flux,
        tmp_path / "outside.safetensors",
        double=("img_attn.qkv",),
        single=(),
        outside=("img_in", "final_layer.linear"),
    )
    message = wiring_failure(pytester, path, "tiny-flux")
    assert "2 of 6 LoRA tensors applied" in message and "lora_unet_final_layer_linear.lora_down.weight" in message


def test_a_single_stream_linear1_off_flux1_widths_is_refused_naming_diffusers_cut(pytester, tiny_flux, tmp_path):
    from lora_harness.fixtures.adapter_writers import write_flux_community

    path = write_flux_community(tiny_flux, tmp_path / "linear1.safetensors", double=(), single=("linear1",))
    message = wiring_failure(pytester, path, "tiny-flux")
    assert "at Flux.1's widths" in message and "this file's has 672" in message


def test_a_single_stream_block_at_flux1_widths_is_proven_including_linear1(tmp_path):
    """Flux.1's widths in one single-stream block (3072 wide, MLP 12288): linear1's update fills q, k, v and the MLP."""
    from diffusers import FluxPipeline

    from lora_harness.fixtures.adapter_writers import write_flux_community
    from lora_harness.fixtures.family_bases import build_flux_width_folder

    pipeline = FluxPipeline.from_pretrained(build_flux_width_folder(tmp_path / "flux-width"))
    for layout in ("kohya", "xlabs"):
        path = write_flux_community(
            pipeline, tmp_path / f"{layout}.safetensors", layout, text_encoder=layout == "kohya"
        )
        with applied(pipeline, path) as application:
            assert application.family == "Flux"
            assert application.tensors_applied == application.tensors == (2 * (3 + 8) if layout == "kohya" else 2 * 2)
            assert not application.scale_mismatches
            assert (
                "transformer.single_transformer_blocks.0.attn.to_q+to_k+to_v"
                + ("+proj_mlp" if layout == "kohya" else "")
                in application.factors
            )


def test_a_flux_file_on_an_sd1_base_fails_wiring_naming_both_families(pytester, community):
    message = wiring_failure(pytester, community["kohya"])
    assert "made for tiny Flux (transformer width 96), but the base is tiny SD1.x (cross-attention 32)" in message


@pytest.mark.parametrize(
    ("key", "wanted"),
    [
        (  # Wan's original names (Flux's own, in peft's factor names, are ComfyUI's layout: read as such)
            "diffusion_model.blocks.0.self_attn.q.lora_A.weight",
            "a LoRA named after a transformer's original (not diffusers') modules",
        ),
        ("lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight", "an SD3 LoRA in Kohya's layout"),
        ("diffusion_model.joint_blocks.0.x_block.attn.qkv.lora_down.weight", "an SD3 LoRA in ComfyUI's layout"),
        ("lora_unet_double_blocks_0_img_attn_qkv.lokr_w1", "a LyCORIS LoKr for Flux"),
    ],
)
def test_transformer_files_no_loader_converts_are_refused_naming_the_layout(pytester, community, key, wanted):
    """(`community` builds the Flux base out here first: modules first imported inside an in-process run are
    dropped after it, and torch cannot register their operators twice.)"""
    from safetensors.torch import save_file

    save_file({key: torch.ones(4, 96)}, pytester.path / "community.safetensors")
    assert wanted in wiring_failure(pytester, "community.safetensors", "tiny-flux")


def test_release_metadata_reads_a_flux_claim_against_the_flux_base(pytester, community):
    """sd-scripts records `ss_base_model_version = flux1`: it agrees with a Flux base, and a file claiming SDXL does not."""
    from safetensors.torch import load_file, save_file

    sdxl_claim = pytester.path / "sdxl-claim.safetensors"
    save_file(load_file(community["kohya"]), sdxl_claim, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    args = (
        "--adapter",
        community["kohya"],
        "--adapter",
        sdxl_claim,
        "--base-model",
        "tiny-flux",
        *FAST,
        "-k",
        "release_metadata",
    )
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1, failed=1)
    assert (
        "trained on SDXL, the base under test is Flux"
        in records(pytester)[("sdxl-claim.safetensors", "release_metadata")]["message"]
    )
