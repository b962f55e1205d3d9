"""SD2.x and SDXL single-file checkpoints end to end, as SD1.x's in `test_single_file.py`: each family's real block
layout at narrow widths, written under the original key names (LDM's for SD2.x with its OpenCLIP-H text encoder under
`cond_stage_model.model.`; SGM's for SDXL, its CLIP-L and OpenCLIP-bigG under `conditioner.embedders.0/1`), stored in
half precision, loaded through the harness's single-file path, and a Kohya adapter passing the five mechanical
checks on it through the plugin."""

import pytest
import torch
from safetensors import safe_open

from tests.helpers import FAST, MECHANICAL, UNET_MODULES, results
from tests.single_file_checkpoints import assert_loads_where_it_was, kohya_adapter, write_single_file

# family -> (diffusers' model type, the stored dtype, key names only that family's layout has)
FAMILIES = {
    "SD2.x": (
        "v2",
        torch.bfloat16,
        (
            "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight",  # q, k, v fused, as OpenCLIP has them
            "cond_stage_model.model.text_projection",
            "model.diffusion_model.input_blocks.1.1.proj_in.weight",  # a linear projection, [32, 32]: no 1x1 conv
        ),
    ),
    "SDXL": (
        "xl_base",
        torch.float16,
        (
            "conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight",
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
            "conditioner.embedders.1.model.text_projection",
            "model.diffusion_model.label_emb.0.0.weight",  # pooled text and size conditioning
            "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",  # depth 10 at level 2
            "model.diffusion_model.output_blocks.5.2.conv.weight",  # level 1's upsampler after its third pair
        ),
    ),
}


# What the harness names each narrow base, by its cross-attention width (SD2.x's is its real 1024).
FAMILY_NAMES = {"SD2.x": "SD2.x", "SDXL": "tiny SDXL"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_file(request, tmp_path_factory):
    """(family, checkpoint, its narrow configs, the models it was written from)."""
    family = request.param
    folder = tmp_path_factory.mktemp(f"{family}-single-file")
    return family, *write_single_file(folder, family, FAMILIES[family][1])


@pytest.fixture
def narrow(family_file, monkeypatch):
    from lora_harness.bases import single_file

    family, checkpoint, configs, models = family_file
    monkeypatch.setitem(single_file.CONFIG_FOLDERS, family, configs)
    return family, checkpoint, models


def test_the_file_is_in_the_original_layout_and_loads_with_every_weight_where_it_was(narrow):
    family, checkpoint, models = narrow
    model_type, dtype, layout_keys = FAMILIES[family]
    with safe_open(checkpoint, framework="pt") as weights:
        keys = set(weights.keys())
        assert {weights.get_slice(k).get_dtype() for k in keys} == {"BF16" if dtype == torch.bfloat16 else "F16"}
    assert set(layout_keys) <= keys
    assert not any(k.startswith(("unet.", "text_encoder", "vae.")) or ".down_blocks." in k for k in keys)
    loaded = assert_loads_where_it_was(checkpoint, models, family, model_type, dtype)
    unet = loaded.unet.config
    if family == "SD2.x":
        assert loaded.scheduler.config.prediction_type == "v_prediction"
        assert unet.upcast_attention and unet.use_linear_projection and unet.cross_attention_dim == 1024
    else:
        assert (unet.layers_per_block, list(unet.transformer_layers_per_block)) == (2, [1, 2, 10])
        assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"


def family_adapter(family: str, models, folder):
    """A Kohya file as sd-scripts writes one for the family: on SD2.x the U-Net's and CLIP's attention with diffusers'
    module names; on SDXL every linear of the U-Net's transformers with SGM's block names, and both text encoders.
    Returns (path, its tensor count)."""
    from lora_harness.fixtures.family_bases import kohya_sdxl_lora, write_kohya_sdxl

    if family == "SD2.x":
        path = kohya_adapter(models, folder / "style.safetensors")
    else:
        layers = models.unet.config.layers_per_block
        path = write_kohya_sdxl(kohya_sdxl_lora(models, seed=1), folder / "style.safetensors", 4, 8, layers)
    with safe_open(path, framework="pt") as weights:
        return path, sum(1 for key in weights.keys() if not key.endswith(".alpha"))


def test_a_kohya_adapter_passes_the_mechanical_checks_on_the_single_file(pytester, narrow):
    family, checkpoint, models = narrow
    adapter, tensors = family_adapter(family, models, pytester.path)
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, "--base-model", checkpoint, *FAST, *MECHANICAL, "--param-budget", "10%"
    )
    result.assert_outcomes(passed=5)
    document = results(pytester)
    (record,) = document["adapters"]
    assert record["tensors_applied"] == record["tensors"] == tensors
    assert record["format"] == "kohya" and record["family"] == document["base"]["family"] == FAMILY_NAMES[family]
    if family == "SDXL":  # SDXL's 722 linears in the U-Net's transformers; 6 per layer of CLIP-L (2) and bigG (10)
        assert tensors == 2 * (UNET_MODULES + 6 * (2 + 10))
    assert document["base"]["single_file"]["family"] == family
    stored = str(FAMILIES[family][1]).removeprefix("torch.")
    assert document["settings"]["dtype_choice"] == f"--dtype auto on cpu: float32; the base is stored in {stored}"
