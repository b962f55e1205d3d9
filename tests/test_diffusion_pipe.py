"""diffusion-pipe's adapters, written as its code at 8f83dbf writes them (`fixtures/adapter_writers.py`): peft folders in
"ComfyUI format", every key under `diffusion_model.`, alpha forced to the rank. Qwen-Image's LoRA and LoKr name
diffusers' modules (it trains diffusers' transformer); Chroma's name BFL's original ones with peft's factor names."""

import shutil

import pytest

from lora_harness.bases.families import pipeline_signature
from lora_harness.bases.tiny_base import build_tiny_chroma_pipeline, build_tiny_qwen_image_pipeline
from lora_harness.fixtures.adapter_writers import write_diffusion_pipe, write_diffusion_pipe_flux
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.kinds import apply_adapter
from tests.helpers import FAST, MECHANICAL, records, results

DAMAGED = ("damaged", "export it again", "written wrongly")


@pytest.fixture(scope="module")
def diffusion_pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion-pipe")
    return {
        kind: write_diffusion_pipe(build_tiny_qwen_image_pipeline().transformer, folder / f"qwen-{kind}", kind, seed=1)
        for kind in ("lora", "lokr")
    }


def test_diffusion_pipe_lora_and_lokr_folders_land_whole_at_their_scale_and_pass(pytester, diffusion_pipe):
    adapters = [a for folder in diffusion_pipe.values() for a in ("--adapter", folder)]
    # every linear of the twin's two blocks at rank 4 is 2.8% of its transformer: the budget of a twin this narrow
    budget = ("--param-budget", "5%")
    result = pytester.runpytest_inprocess(*adapters, "--base-model", "tiny-qwen-image", *budget, *FAST, *MECHANICAL)
    result.assert_outcomes(passed=10)
    by_name = {adapter["name"]: adapter for adapter in results(pytester)["adapters"]}
    lora, lokr = by_name["qwen-lora"], by_name["qwen-lokr"]
    assert (lora["kind"], lora["format"]) == ("LoRA", "diffusion-model")
    assert (lokr["kind"], lokr["format"]) == ("LoKr", "diffusion-model")
    for adapter in (lora, lokr):  # alpha forced to the rank by diffusion-pipe: scale 1
        assert adapter["tensors_applied"] == adapter["tensors"] > 0 and adapter["scale"] == 1.0
    assert lokr["tensors"] == 3 * 2 * 21  # w1, w2_a, w2_b on the 21 linears of each of the twin's 2 blocks


def test_a_lokr_the_pipeline_does_not_convert_is_named_never_called_damaged(pytester, diffusion_pipe, tmp_path):
    bare = shutil.copy(diffusion_pipe["lokr"] / "adapter_model.safetensors", tmp_path / "qwen-lokr.safetensors")
    pytester.runpytest_inprocess("--adapter", bare, "--base-model", "tiny-qwen-image", *FAST, "-k", "wiring")
    message = records(pytester)[("qwen-lokr.safetensors", "wiring")]["message"]
    assert (
        "a LoKr named after the denoiser's modules" in message
        and "convert such files for Z-Image and Flux.2 only" in message
    ), message
    assert "a valid file of a kind lora-harness does not apply yet" in message
    assert not any(word in message for word in DAMAGED), message


def test_a_chroma_folder_in_comfyui_names_with_peft_factor_names_lands_whole_and_passes(pytester, tmp_path):
    """diffusers' Flux conversion reads ComfyUI's `lora_down` / `lora_up` only and returns this file unconverted;
    the harness hands it over in those names, as ComfyUI reads both. Single-stream `linear1` left out: diffusers cuts
    it at Flux.1's widths, which the twin does not have."""
    twin = build_tiny_chroma_pipeline()  # rank 2: rank 4 on every module is 2.6% of a transformer this narrow
    folder = write_diffusion_pipe_flux(twin, tmp_path / "chroma", rank=2, seed=1, single=("linear2",))
    result = pytester.runpytest_inprocess("--adapter", folder, "--base-model", "tiny-chroma", *FAST, *MECHANICAL)
    result.assert_outcomes(passed=5)
    (adapter,) = results(pytester)["adapters"]
    assert (adapter["format"], adapter["kind"], adapter["scale"]) == ("comfyui-flux-peft", "LoRA", 1.0)
    assert adapter["tensors_applied"] == adapter["tensors"] == 2 * 9  # 8 double-block modules and linear2, A and B


def test_a_tensor_peft_did_not_set_is_named(diffusion_pipe, monkeypatch):
    """The proof reads each tensor back from its layer: one the loader left at its initial value is a mismatch."""
    import peft

    real = peft.set_peft_model_state_dict

    def dropping(model, state, adapter_name):
        dropped = sorted(key for key in state if key.endswith("lokr_w2_b"))[0]
        return real(model, {k: v for k, v in state.items() if k != dropped}, adapter_name)

    monkeypatch.setattr(peft, "set_peft_model_state_dict", dropping)
    pipeline = build_tiny_qwen_image_pipeline()
    application = apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(diffusion_pipe["lokr"]), "a")
    assert len(application.value_mismatches) == 1 and application.value_mismatches[0].endswith("lokr_w2_b")
    assert application.tensors_applied == application.tensors - 1


def test_a_module_the_base_lacks_is_refused_naming_it(diffusion_pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(diffusion_pipe["lokr"], tmp_path / "renamed")
    tensors = load_file(folder / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first.replace("transformer_blocks.0.", "transformer_blocks.9.")] = tensors.pop(first)
    save_file(tensors, folder / "adapter_model.safetensors")
    pipeline = build_tiny_qwen_image_pipeline()
    with pytest.raises(AdapterLoadError, match=r"1 of its 126 LoKr tensors match no module .*transformer_blocks\.9\."):
        apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(folder), "a")


def test_a_lokr_folder_on_another_family_s_base_is_named_for_its_family(diffusion_pipe):
    """Read from the width its factors take at the registry's width-reading modules, before module names are matched."""
    from lora_harness.bases.tiny_base import build_tiny_z_image_pipeline
    from lora_harness.loading.adapter_file import FamilyMismatch

    pipeline = build_tiny_z_image_pipeline()
    with pytest.raises(
        FamilyMismatch, match=r"made for tiny Qwen-Image \(transformer width 192\), but the base is tiny Z-Image"
    ):
        apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(diffusion_pipe["lokr"]), "a")
    assert not any(pipeline.get_list_adapters().values())
