"""Any diffusers pipeline with a LoRA loader and no family module, as a user brings it: an AuraFlow folder
(`AuraFlowPipeline`, `AuraFlowLoraLoaderMixin`; lora-harness has no AuraFlow module). Its adapters are converted
and injected by the class's own loader and get the mechanical checks; there is no reference overfit for it, and the
report says so."""

import pytest

from tests.helpers import MECHANICAL, records, results, wiring_failure

FAST = ("--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
# Attention and MLPs: at these widths AuraFlow's attention alone barely moves a picture (measured: 0.01 of 255).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "linear_1", "linear_2", "out_projection")


def tiny_auraflow():
    """AuraFlow-shaped, built from diffusers' own classes: joint and single DiT blocks, UMT5's token states."""
    import torch
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from lora_harness.bases.tiny_base import _vae, t5_tokenizer

    torch.manual_seed(0)
    transformer = AuraFlowTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=32,
        num_attention_heads=10,  # 320 wide
        joint_attention_dim=32,
        caption_projection_dim=320,
        pos_embed_max_size=64,
    )
    tokenizer = t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4)
    )
    return AuraFlowPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=_vae(),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


@pytest.fixture(scope="module")
def auraflow(tmp_path_factory):
    """The base as a diffusers folder, and an adapter as `AuraFlowPipeline.save_lora_weights` writes it."""
    from lora_harness.fixtures.adapter_writers import make_lora, write_adapter, write_diffusers_components

    folder = tmp_path_factory.mktemp("auraflow")
    pipeline = tiny_auraflow()
    pipeline.save_pretrained(folder / "base", safe_serialization=True)
    lora = make_lora(pipeline.transformer, rank=4, seed=1, targets=TARGETS)
    return {
        "base": folder / "base",
        "diffusers": write_diffusers_components({"transformer": lora}, folder / "diffusers", 4, 8, type(pipeline)),
        "peft": write_adapter("peft", lora, folder / "peft", 4, 4),
    }


def test_its_adapters_get_the_mechanical_checks_through_its_own_loader(pytester, auraflow):
    adapters = ("--adapter", auraflow["diffusers"], "--adapter", auraflow["peft"])
    pytester.runpytest_inprocess(*adapters, "--base-model", auraflow["base"], *FAST, *MECHANICAL)
    document = results(pytester)
    assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    assert document["base"]["family"] == "AuraFlow"
    # No reference overfit without a family module: the controls are skipped, saying why.
    assert document["controls"]["status"] == "skipped" and "no family module" in document["controls"]["message"]
    # Attention's 4 and 3 per MLP: the joint block's (image attention, both streams' MLPs: 10), the single block's
    # (7), and the timestep embedding's `linear_1`, `linear_2`.
    tensors = 2 * 19
    for adapter in document["adapters"]:
        assert adapter["tensors_applied"] == adapter["tensors"] == tensors and adapter["family"] == "AuraFlow"
    assert {a["format"]: a["scale"] for a in document["adapters"]} == {"diffusers": 2.0, "peft": 1.0}
    budget = records(pytester)[("peft", "param_budget")]
    assert {
        "joint_transformer_blocks/attn",
        "joint_transformer_blocks/ff_context",
        "single_transformer_blocks/ff",
    } <= set(budget["details"]["per_block"])


def test_the_reference_on_it_is_skipped_saying_why(pytester, auraflow):
    result = pytester.runpytest_inprocess("--adapter", "reference", "--base-model", auraflow["base"], *FAST)
    result.assert_outcomes(skipped=11)
    (adapter,) = results(pytester)["adapters"]
    assert all("no family module" in r["message"] for r in results(pytester)["results"])


def test_an_adapter_for_another_model_fails_wiring_on_it(pytester, auraflow, write_lora):
    message = wiring_failure(pytester, write_lora("kohya", "sd1.safetensors"), str(auraflow["base"]))
    assert "made for tiny SD1.x (cross-attention 32), but the base is AuraFlow" in message


def test_a_pipeline_class_of_a_known_family_s_denoiser_checks_that_family_s_adapters(pytester, tmp_path, write_lora):
    """A perturbed-attention-guidance pipeline of SD's U-Net (`StableDiffusionPAGPipeline`, no family module of its
    own): an SD1.x adapter is that family's, rendered through the class's own call."""
    from diffusers import StableDiffusionPAGPipeline

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    StableDiffusionPAGPipeline.from_pipe(build_tiny_pipeline(), pag_applied_layers=["mid"]).save_pretrained(
        tmp_path / "pag", safe_serialization=True
    )
    adapter = write_lora("kohya", "sd1.safetensors")
    pytester.runpytest_inprocess("--adapter", adapter, "--base-model", tmp_path / "pag", *FAST, *MECHANICAL)
    document = results(pytester)
    assert [(r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    (loaded,) = document["adapters"]
    assert loaded["tensors_applied"] == loaded["tensors"] and loaded["family"] == document["base"]["family"]
    assert "no family module" in document["controls"]["message"]
