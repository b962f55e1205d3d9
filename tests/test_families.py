"""Model families beyond SD1.x as users run them: the embedded SDXL-shaped base (two text encoders, added
conditioning) with adapters in Kohya (`lora_te1_`/`lora_te2_`) and diffusers layouts, an SD2.x-shaped folder
(1024-wide text states, v-prediction), the embedded Flux- and SD3-shaped MMDiT bases (rectified flow), their
reference overfits, and each one's wrong-family control both ways."""

import pytest

from tests.helpers import FAST, MECHANICAL, records, results, wiring_failure

SDXL_TENSORS = 2 * (64 + 8 + 8)  # A and B of 64 U-Net projections and 8 per text encoder


@pytest.fixture(scope="module")
def sdxl_adapters(tmp_path_factory):
    from lora_harness.bases.tiny_base import build_tiny_sdxl_pipeline
    from lora_harness.fixtures.adapter_writers import (
        make_pipeline_lora,
        write_diffusers_components,
        write_kohya_components,
    )

    folder = tmp_path_factory.mktemp("sdxl-adapters")
    loras = make_pipeline_lora(build_tiny_sdxl_pipeline(), seed=1)
    return {
        "kohya": write_kohya_components(loras, folder / "kohya.safetensors", 4, 8),
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8),
    }


def test_sdxl_adapters_in_each_layout_pass_with_their_text_encoders_proven(pytester, sdxl_adapters):
    adapters = [a for path in sdxl_adapters.values() for a in ("--adapter", path)]
    # At tiny widths rank 4 on both text encoders and the U-Net is 1.99% of the U-Net: at the 2% default's edge.
    result = pytester.runpytest_inprocess(
        *adapters, "--base-model", "tiny-sdxl", *FAST, *MECHANICAL, "--param-budget", "5%"
    )
    result.assert_outcomes(passed=2 * 5)
    document = results(pytester)
    assert document["base"]["family"] == "tiny (SDXL-shaped)"
    for adapter in document["adapters"]:
        assert adapter["tensors_applied"] == adapter["tensors"] == SDXL_TENSORS
        assert adapter["family"] == "tiny SDXL" and adapter["scale"] == 2.0  # alpha 8 / rank 4, in every component
    assert {a["format"] for a in document["adapters"]} == {"kohya", "diffusers"}


def test_an_sd1_adapter_on_sdxl_and_an_sdxl_adapter_on_sd1_fail_wiring_naming_both(pytester, sdxl_adapters, write_lora):
    sd1 = write_lora("kohya", "sd1.safetensors")
    message = wiring_failure(pytester, sd1, "tiny-sdxl")
    assert "made for tiny SD1.x (cross-attention 32), but the base is tiny SDXL (cross-attention 64)" in message
    message = wiring_failure(pytester, sdxl_adapters["kohya"])
    assert "made for tiny SDXL (cross-attention 64), but the base is tiny SD1.x (cross-attention 32)" in message


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
    message = wiring_failure(pytester, sd1, base)
    assert "made for tiny SD1.x (cross-attention 32), but the base is SD2.x (cross-attention 1024)" in message
    message = wiring_failure(pytester, adapters["peft"])
    assert "made for SD2.x (cross-attention 1024), but the base is tiny SD1.x (cross-attention 32)" in message


@pytest.fixture(scope="module")
def flux_adapters(tmp_path_factory):
    """Adapters for the embedded Flux-shaped base: diffusers' layout with the CLIP text encoder, as its Flux
    training script writes it, and PEFT's folder and single-file layouts of the transformer alone."""
    from lora_harness.bases.tiny_base import build_tiny_flux_pipeline
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_adapter, write_diffusers_components

    folder = tmp_path_factory.mktemp("flux-adapters")
    pipeline = build_tiny_flux_pipeline()
    loras = make_pipeline_lora(pipeline, seed=1)
    return {
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8, type(pipeline)),
        "peft": write_adapter("peft", loras["transformer"], folder / "peft", 4, 4),
        "peft-file": write_adapter("peft-file", loras["transformer"], folder / "peft-file.safetensors", 4, 4),
    }


def test_flux_adapters_in_each_layout_pass_with_both_streams_and_the_text_encoder_proven(pytester, flux_adapters):
    adapters = [a for path in flux_adapters.values() for a in ("--adapter", path)]
    pytester.runpytest_inprocess(*adapters, "--base-model", "tiny-flux", *FAST, *MECHANICAL).assert_outcomes(
        passed=3 * 5
    )
    document = results(pytester)
    assert document["base"]["family"] == "tiny (Flux-shaped)" and document["base"]["guidance_scale"] == 3.5
    applied = {a["format"]: a for a in document["adapters"]}
    # One double-stream block (image and text projections, 8) and one single-stream block (q, k, v).
    transformer_tensors = 2 * (8 + 3)
    assert applied["diffusers"]["tensors_applied"] == applied["diffusers"]["tensors"] == transformer_tensors + 2 * 8
    assert applied["peft"]["tensors_applied"] == applied["peft-file"]["tensors_applied"] == transformer_tensors
    assert {a["family"] for a in document["adapters"]} == {"tiny Flux"}
    assert applied["diffusers"]["scale"] == 2.0 and applied["peft"]["scale"] == 1.0
    budget = records(pytester)[("peft", "param_budget")]
    assert set(budget["details"]["per_block"]) == {"double/attn", "double/attn-text", "single/attn"}


def test_the_reference_overfit_trains_on_flux_with_rectified_flow_and_its_controls_hold(pytester):
    args = ("--adapter", "reference", "--base-model", "tiny-flux", "--render-seeds", "1", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess(*args, "-k", "wiring or pixel_diff or frozen_base or param_budget").assert_outcomes(
        passed=4
    )
    document = results(pytester)
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    reference = document["adapters"][0]
    assert reference["tensors_applied"] == reference["tensors"] == 2 * (8 + 3)


def test_an_sd1_adapter_on_flux_and_a_flux_adapter_on_sd1_fail_wiring_naming_both(pytester, flux_adapters, write_lora):
    sd1 = write_lora("kohya", "sd1.safetensors")
    message = wiring_failure(pytester, sd1, "tiny-flux")
    assert "made for tiny SD1.x (cross-attention 32), but the base is tiny Flux (transformer width 96)" in message
    message = wiring_failure(pytester, flux_adapters["peft-file"])
    assert "made for tiny Flux (transformer width 96), but the base is tiny SD1.x (cross-attention 32)" in message


@pytest.fixture(scope="module")
def sd3_adapters(tmp_path_factory):
    """Adapters for the embedded SD3-shaped base: diffusers' layout with both CLIP text encoders, as its SD3
    training script writes it, and PEFT's folder layout of the transformer."""
    from lora_harness.bases.tiny_base import build_tiny_sd3_pipeline
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_adapter, write_diffusers_components

    folder = tmp_path_factory.mktemp("sd3-adapters")
    pipeline = build_tiny_sd3_pipeline()
    loras = make_pipeline_lora(pipeline, seed=1)
    return {
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8, type(pipeline)),
        "peft": write_adapter("peft", loras["transformer"], folder / "peft", 4, 4),
    }


def test_sd3_adapters_pass_with_both_text_encoders_proven_and_the_reference_trains(pytester, sd3_adapters):
    adapters = [a for path in sd3_adapters.values() for a in ("--adapter", path)]
    args = ("--base-model", "tiny-sd3", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess("--adapter", "reference", *adapters, *args, *MECHANICAL).assert_outcomes(passed=3 * 5)
    document = results(pytester)
    assert document["base"]["family"] == "tiny (SD3-shaped)" and document["base"]["guidance_scale"] == 7.0
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    applied = {a["name"]: a for a in document["adapters"]}
    # Two joint blocks; the last one has no text-stream output projection: 8 + 7 projections.
    transformer_tensors = 2 * (8 + 7)
    assert applied["reference"]["tensors_applied"] == applied["peft"]["tensors_applied"] == transformer_tensors
    diffusers = applied["pytorch_lora_weights.safetensors"]
    assert diffusers["tensors_applied"] == diffusers["tensors"] == transformer_tensors + 2 * 2 * 8
    assert {a["family"] for a in document["adapters"]} == {"tiny SD3"}
    budget = records(pytester)[("peft", "param_budget")]
    assert set(budget["details"]["per_block"]) == {"joint/attn", "joint/attn-text"}


def test_a_flux_adapter_on_sd3_and_an_sd3_adapter_on_flux_fail_wiring_naming_both(
    pytester, sd3_adapters, flux_adapters
):
    """Both are MMDiT transformers with the same module names: only the family signature tells them apart."""
    message = wiring_failure(pytester, flux_adapters["peft-file"], "tiny-sd3")
    assert "made for tiny Flux (transformer width 96), but the base is tiny SD3 (transformer width 128)" in message
    message = wiring_failure(pytester, sd3_adapters["peft"], "tiny-flux")
    assert "made for tiny SD3 (transformer width 128), but the base is tiny Flux (transformer width 96)" in message


@pytest.fixture(scope="module")
def chroma_adapters(tmp_path_factory):
    """Adapters for the embedded Chroma-shaped base: diffusers' layout as `ChromaPipeline.save_lora_weights`
    writes it (Flux's loader; T5, Chroma's only text encoder, is left alone as trainers do), and PEFT's folder."""
    from lora_harness.bases.tiny_base import build_tiny_chroma_pipeline
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_adapter, write_diffusers_components

    folder = tmp_path_factory.mktemp("chroma-adapters")
    pipeline = build_tiny_chroma_pipeline()
    loras = make_pipeline_lora(pipeline, seed=1)
    assert set(loras) == {"transformer"}
    return {
        "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8, type(pipeline)),
        "peft": write_adapter("peft", loras["transformer"], folder / "peft", 4, 4),
    }


def test_chroma_adapters_pass_at_their_declared_scale_and_the_reference_trains_with_its_controls(
    pytester, chroma_adapters
):
    adapters = [a for path in chroma_adapters.values() for a in ("--adapter", path)]
    args = ("--base-model", "tiny-chroma", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess("--adapter", "reference", *adapters, *args, *MECHANICAL).assert_outcomes(passed=3 * 5)
    document = results(pytester)
    assert document["base"]["family"] == "tiny (Chroma-shaped)" and document["base"]["guidance_scale"] == 5.0
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    applied = {a["format"] if a["name"] != "reference" else "reference": a for a in document["adapters"]}
    transformer_tensors = 2 * (8 + 3)  # one double-stream block (both streams) and one single-stream block
    for adapter in applied.values():
        assert adapter["tensors_applied"] == adapter["tensors"] == transformer_tensors
        assert adapter["family"] == "tiny Chroma"
    assert applied["diffusers"]["scale"] == 2.0 and applied["peft"]["scale"] == 1.0  # alpha 8 / 4, alpha 4 / 4
    budget = records(pytester)[("peft", "param_budget")]
    assert set(budget["details"]["per_block"]) == {"double/attn", "double/attn-text", "single/attn"}


def test_chroma_and_flux_and_sd1_adapters_on_each_other_s_base_fail_wiring_naming_both(
    pytester, chroma_adapters, flux_adapters, write_lora
):
    """The tiny twins differ in width (96 and 160), so the signature tells Flux from Chroma; at their real widths
    (both 3072) attention-only keys fit either and are checked on the base given."""
    message = wiring_failure(pytester, flux_adapters["peft-file"], "tiny-chroma")
    assert "made for tiny Flux (transformer width 96), but the base is tiny Chroma (transformer width 160)" in message
    message = wiring_failure(pytester, chroma_adapters["peft"], "tiny-flux")
    assert "made for tiny Chroma (transformer width 160), but the base is tiny Flux (transformer width 96)" in message
    message = wiring_failure(pytester, write_lora("kohya", "sd1.safetensors"), "tiny-chroma")
    assert "made for tiny SD1.x (cross-attention 32), but the base is tiny Chroma (transformer width 160)" in message
    message = wiring_failure(pytester, chroma_adapters["diffusers"])
    assert "made for tiny Chroma (transformer width 160), but the base is tiny SD1.x (cross-attention 32)" in message


def test_each_family_trains_its_reference_on_its_own_objective():
    """The target a denoiser learns: noise (epsilon), velocity (v-prediction) or noise - x0 (rectified flow)."""
    import torch
    from diffusers import DDIMScheduler

    from lora_harness.bases.families.objectives import NoisePrediction as DiffusionExample
    from lora_harness.bases.families.objectives import RectifiedFlow as FlowExample

    latents, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for prediction_type in ("epsilon", "v_prediction"):
        scheduler = DDIMScheduler(prediction_type=prediction_type)
        noisy, timestep, target = DiffusionExample(latents, {}, scheduler).noised(
            noise, torch.Generator().manual_seed(0)
        )
        expected = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timestep)
        assert torch.equal(target, expected) and torch.equal(noisy, scheduler.add_noise(latents, noise, timestep))
    packed, packed_noise = latents.reshape(1, 16, 16), noise.reshape(1, 16, 16)
    noisy, sigma, target = FlowExample(packed, {}).noised(packed_noise, torch.Generator().manual_seed(0))
    assert torch.equal(target, packed_noise - packed)
    assert torch.allclose(noisy, (1 - sigma) * packed + sigma * packed_noise)
    noisy, sigma, target = FlowExample(latents, {}, timestep_scale=1000.0).noised(
        noise, torch.Generator().manual_seed(0)
    )
    assert torch.equal(target, noise - latents) and torch.allclose(noisy, (1 - sigma) * latents + sigma * noise)


@pytest.mark.parametrize("base", ["tiny-sdxl", "tiny-flux", "tiny-chroma", "tiny-sd3"])
def test_the_readme_reference_run_on_each_family_base_is_green(pytester, base):
    """`pytest --adapter reference --base-model BASE`, as docs/families.md lists it: default settings, every check; the
    CLIP checks skip (no self-test CLIP off the embedded default) and so do the corpus checks."""
    result = pytester.runpytest_inprocess("--adapter", "reference", "--base-model", base, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, skipped=5)
    assert result.ret == 0


def test_frozen_base_digests_every_model_of_the_pipeline_sd3s_t5_included():
    import torch

    from lora_harness.bases.digests import BaseWatch
    from lora_harness.bases.tiny_base import build_tiny_sd3_pipeline

    pipeline = build_tiny_sd3_pipeline()
    watch = BaseWatch(pipeline)
    with torch.no_grad():
        pipeline.text_encoder_3.shared.weight.add_(1.0)
    changed = watch.full().changed
    assert changed and all(name.startswith("text_encoder_3.") for name in changed)


def test_each_signature_names_the_lineage_trainers_record():
    from lora_harness.bases.families import FLUX, SD3, UNET, Signature

    lineages = {
        (UNET, 32): "SD1.x",
        (UNET, 768): "SD1.x",
        (UNET, 1024): "SD2.x",
        (UNET, 64): "SDXL",
        (UNET, 2048): "SDXL",
        (FLUX, 96): "Flux",
        (FLUX, 3072): "Flux",
        (SD3, 128): "SD3",
        (SD3, 2432): "SD3",
        (UNET, 320): None,
    }
    assert {key: Signature(*key).lineage for key in lineages} == lineages


def test_budget_blocks_use_each_familys_own_names():
    from lora_harness.bases.families import FLUX, SD3, block_of

    assert block_of("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k") == "down/attn2"
    assert block_of("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0") == "mid/attn1"
    # LyCORIS files reach the resnets too: each layer kind is its own block, so norms are compared like with like.
    assert block_of("unet.mid_block.resnets.1.time_emb_proj") == "mid/time-emb"
    assert block_of("unet.up_blocks.2.resnets.0.conv_shortcut") == "up/conv"
    assert block_of("unet.down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj") == "down/ff"
    assert block_of("transformer.transformer_blocks.3.attn.to_q", FLUX) == "double/attn"
    assert block_of("transformer.transformer_blocks.3.attn.to_add_out", FLUX) == "double/attn-text"
    assert block_of("transformer.transformer_blocks.3.ff_context.net.2", FLUX) == "double/ff-text"
    assert block_of("transformer.single_transformer_blocks.7.attn.to_v", FLUX) == "single/attn"
    assert block_of("transformer.transformer_blocks.3.attn.add_k_proj", SD3) == "joint/attn-text"
    assert block_of("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj") == "text_encoder_2"
