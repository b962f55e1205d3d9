"""LoHa and LoKr as peft saves them, applied by peft itself (diffusion-pipe's folders: tests/test_diffusion_pipe.py)."""

import pytest
import torch

from lora_harness.bases.tiny_base import build_tiny_pipeline
from tests.helpers import FAST, MECHANICAL, results


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


def _loha_folder(folder, **config):
    from peft import LoHaConfig, get_peft_model

    model = get_peft_model(build_tiny_pipeline().unet, LoHaConfig(r=4, alpha=4, **config))
    model.save_pretrained(folder)
    return folder


def test_a_layer_the_config_targets_but_the_file_lacks_is_refused_naming_it(tmp_path):
    """peft builds a layer for each target at its own initial values: what it adds is nothing the file says."""
    from safetensors.torch import load_file, save_file

    from lora_harness.bases.families import pipeline_signature
    from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
    from lora_harness.loading.kinds import apply_adapter

    folder = _loha_folder(tmp_path / "loha", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    tensors = load_file(folder / "adapter_model.safetensors")
    dropped = sorted(tensors)[0].rsplit(".hada_", 1)[0]
    save_file({k: v for k, v in tensors.items() if not k.startswith(dropped)}, folder / "adapter_model.safetensors")
    pipeline = build_tiny_pipeline()
    with pytest.raises(AdapterLoadError, match=r"build 1 LoHa layers the file holds no tensor for, first unet\."):
        apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(folder), "a")
    assert not any(pipeline.get_list_adapters().values())  # nothing of it stays on the base


def test_a_peft_loha_with_tucker_factors_is_named_never_called_damaged(pytester, tmp_path):
    folder = _loha_folder(tmp_path / "tucker", target_modules=["conv1", "conv2"], use_effective_conv2d=True)
    pytester.runpytest_inprocess("--adapter", folder, *FAST, "-k", "wiring").assert_outcomes(failed=1)
    message = results(pytester)["results"][0]["message"]
    assert "a LoHa with Tucker factors" in message and "a valid file of a kind lora-harness does not apply" in message
    assert not any(word in message for word in ("damaged", "export it again", "written wrongly")), message
