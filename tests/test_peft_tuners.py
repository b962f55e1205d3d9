"""LoHa and LoKr as peft saves them, applied by peft itself (diffusion-pipe's folders: tests/test_diffusion_pipe.py)."""

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
