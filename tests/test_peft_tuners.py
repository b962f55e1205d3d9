"""LoHa and LoKr as peft saves them, applied by peft itself: peft's own `save_pretrained` folders, and diffusion-pipe's
ComfyUI-format folders (`diffusion_model.` keys beside peft's adapter_config.json), written as diffusion-pipe writes
them. The same LoKr without its config, on a family whose pipeline converts no LoKr, is named, never called damaged."""

import shutil

import pytest
import torch

from lora_harness.bases.families import pipeline_signature
from lora_harness.bases.tiny_base import build_tiny_pipeline, build_tiny_qwen_image_pipeline
from lora_harness.fixtures.adapter_writers import write_diffusion_pipe
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


def test_peft_s_own_loha_and_lokr_folders_pass_beside_a_lora(pytester, tmp_path, write_lora):
    """Run between two LoRA files, in one session: peft's LoHa and LoKr layers sit beside diffusers' LoRA layers."""
    from peft import LoHaConfig, LoKrConfig, get_peft_model

    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    for name, config in (
        ("loha", LoHaConfig(r=4, alpha=8, target_modules=targets)),
        ("lokr", LoKrConfig(r=4, alpha=2, target_modules=targets)),
    ):
        model = get_peft_model(build_tiny_pipeline().unet, config)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # peft starts LoHa's w2_b and LoKr's w1 at zero: move them as training would
            for parameter in model.parameters():
                if parameter.requires_grad and not parameter.any():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        model.save_pretrained(tmp_path / name)
    before, after = write_lora("kohya", "before.safetensors"), write_lora("peft", "after")
    adapters = ("--adapter", before, "--adapter", tmp_path / "loha", "--adapter", tmp_path / "lokr", "--adapter", after)
    result = pytester.runpytest_inprocess(*adapters, "--param-budget", "5%", *FAST, *MECHANICAL)  # LoHa: 4 factors
    result.assert_outcomes(passed=20)
    by_name = {adapter["name"]: adapter for adapter in results(pytester)["adapters"]}
    assert by_name["before.safetensors"]["tensors_applied"] == by_name["after"]["tensors_applied"] == 64
    assert (by_name["loha"]["kind"], by_name["loha"]["format"], by_name["loha"]["scale"]) == ("LoHa", "peft", 2.0)
    assert (by_name["lokr"]["kind"], by_name["lokr"]["scale"]) == ("LoKr", 0.5)
    for adapter in by_name.values():
        assert adapter["tensors_applied"] == adapter["tensors"] > 0 and not adapter.get("defects")


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
