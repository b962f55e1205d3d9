"""SDXL at its real block layout (two layers per block, transformer depths 1/2/10) with Kohya sd-scripts' files: it
trains SDXL on its own U-Net, whose modules keep SGM's block names (`lora_unet_input_blocks_4_1_proj_in`), which
only the base's layout maps to diffusers' (`down_blocks.1.attentions.0.proj_in`); the embedded tiny SDXL has one
layer per block, where no test could tell a right mapping from a wrong one."""

import pytest
import torch

from tests.helpers import FAST, MECHANICAL, UNET_MODULES, records, results

TEXT_MODULES = 2 * 6  # per text encoder: 2 layers x (q, k, v, out, fc1, fc2)
TENSORS = 2 * (UNET_MODULES + 2 * TEXT_MODULES)


@pytest.fixture(scope="module")
def sdxl_layout(tmp_path_factory):
    """The SDXL-layout base stored in float16, and one LoRA written by sd-scripts' naming (SGM blocks) and with
    diffusers' names: the same tensors in the same modules."""
    from lora_harness.fixtures.family_bases import kohya_sdxl_lora, save_base, sdxl_layout_pipeline, write_kohya_sdxl

    folder = tmp_path_factory.mktemp("sdxl-layout")
    pipeline = sdxl_layout_pipeline()
    loras = kohya_sdxl_lora(pipeline, seed=1)
    layers_per_block = pipeline.unet.config.layers_per_block
    adapters = {
        "sgm": write_kohya_sdxl(loras, folder / "sgm.safetensors", 4, 8, sgm_layers_per_block=layers_per_block),
        "diffusers-names": write_kohya_sdxl(loras, folder / "diffusers-names.safetensors", 4, 8),
    }
    return save_base(pipeline, folder / "base", torch.float16), adapters


def test_the_file_carries_the_sgm_names_sd_scripts_gives_sdxls_modules(sdxl_layout):
    """As `library/sdxl_original_unet.py` builds SDXL: conv_in is input block 0, then per level two (resnet,
    transformer) pairs and a downsampler; the middle block's transformer at .1; three pairs per level going up."""
    from safetensors import safe_open

    _, adapters = sdxl_layout
    with safe_open(adapters["sgm"], framework="pt") as weights:
        keys = set(weights.keys())
    for module in (
        "lora_unet_input_blocks_4_1_proj_in",  # level 1's first transformer (depth 2)
        "lora_unet_input_blocks_5_1_transformer_blocks_1_attn1_to_out_0",
        "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k",  # level 2's second transformer (depth 10)
        "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        "lora_unet_output_blocks_0_1_transformer_blocks_9_ff_net_0_proj",
        "lora_unet_output_blocks_5_1_proj_out",  # the last transformer going up
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "lora_te2_text_model_encoder_layers_1_mlp_fc2",
    ):
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"} <= keys, module
    unet = {k for k in keys if k.startswith("lora_unet_") and not k.endswith(".alpha")}
    assert len(unet) == 2 * UNET_MODULES
    assert not any(name in k for k in unet for name in ("down_blocks", "_mid_block_", "up_blocks"))


def test_a_kohya_sdxl_file_with_sgm_names_and_with_diffusers_names_pass_with_every_tensor_proven(pytester, sdxl_layout):
    """Both through diffusers' own conversion; before the SGM blocks were mapped by the base's layout, 48 of 1492
    tensors applied (the text encoders'): '1444 keys match no module, first lora_unet_input_blocks_4_1_proj_in…'."""
    base, adapters = sdxl_layout
    given = [a for path in adapters.values() for a in ("--adapter", path)]
    # rank 4 on all 722 linears of so narrow a U-Net is 7.4% of it
    result = pytester.runpytest_inprocess(*given, "--base-model", base, *FAST, *MECHANICAL, "--param-budget", "10%")
    result.assert_outcomes(passed=2 * 5)
    document = results(pytester)
    assert document["settings"]["dtype_choice"] == "--dtype auto on cpu: float32; the base is stored in float16"
    applied = {a["name"]: a for a in document["adapters"]}
    for adapter in applied.values():
        assert adapter["tensors_applied"] == adapter["tensors"] == TENSORS
        assert adapter["format"] == "kohya" and adapter["scale"] == 2.0 and adapter["family"] == "tiny SDXL"
    checks = records(pytester)
    # The same tensors in the same layers: the same renders, the same blocks.
    sgm, diffusers_names = ("sgm.safetensors", "diffusers-names.safetensors")
    assert checks[(sgm, "pixel_diff")]["value"] == checks[(diffusers_names, "pixel_diff")]["value"]
    budget = checks[(sgm, "param_budget")]["details"]["per_block"]
    assert budget == checks[(diffusers_names, "param_budget")]["details"]["per_block"]
    assert {"down/attn1", "mid/attn2", "up/ff", "up/proj"} <= set(budget)


@pytest.mark.parametrize(
    "keys, wanted",
    [
        # diffusers' mapping raises on these; an index past (resnet, transformer, upsampler) raised IndexError uncaught
        (("lora_unet_middle_block_7_proj_in",), ("Kohya keys that diffusers cannot map (Invalid middle block id 7.)",)),
        (("lora_unet_output_blocks_0_5_proj_in",), ("Kohya keys that diffusers cannot map (list index out of range)",)),
        # ... and drops the SGM-named half of this one without a word
        (
            ("lora_unet_input_blocks_4_1_proj_in", "lora_unet_down_blocks_1_attentions_0_proj_in"),
            (
                "named after SGM's blocks (`lora_unet_input_blocks_4_1_proj_in.lora_",
                "and after diffusers' (`lora_unet_down_blocks_1_attentions_0_proj_in.lora_",
                "drops the SGM-named ones",
            ),
        ),
    ],
)
def test_sgm_names_diffusers_cannot_map_or_would_drop_are_refused_naming_the_file(tmp_path, keys, wanted):
    from safetensors.torch import save_file

    from lora_harness.bases.families import pipeline_signature
    from lora_harness.bases.tiny_base import build_tiny_sdxl_pipeline
    from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
    from lora_harness.loading.kinds import apply_adapter

    path = tmp_path / "renamed.safetensors"
    save_file({f"{k}.lora_{role}.weight": torch.ones(4, 4) for k in keys for role in ("down", "up")}, path)
    pipeline = build_tiny_sdxl_pipeline()
    with pytest.raises(AdapterLoadError) as error:
        apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(path), "a")
    assert str(error.value).startswith(f"{path}: ") and all(part in str(error.value) for part in wanted)
