"""LTX-2 (`LTX2Pipeline`: joint video and audio streams, Gemma 3 through the text connectors), as users bring it:
the embedded `tiny-ltx2`, adapters in diffusers' `save_lora_weights` layout, PEFT's folder and the file Lightricks'
own trainer writes, each landing whole at its declared scale through the pipeline's own loader and conversion, and
wrong-family controls both ways; the reference overfit trains its video stream on a still and passes its controls."""

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import MECHANICAL, results, wiring_failure

FAST = ("--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")  # the reference trains

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")  # of every attention: each stream's own, its text's, the other's


def lightricks_trainer_file(lora, path):
    """As Lightricks' ltx-trainer saves a LoRA (`LtxvTrainer._save_checkpoint`, packages/ltx-trainer at 253d450):
    peft's state dict less `base_model.model.`, each key under `diffusion_model.` for ComfyUI, bfloat16, no alpha."""
    tensors = {}
    for module, (down, up) in lora.items():
        tensors[f"diffusion_model.{module}.lora_A.weight"] = down.to(torch.bfloat16).contiguous()
        tensors[f"diffusion_model.{module}.lora_B.weight"] = up.to(torch.bfloat16).contiguous()
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """diffusers' layout (alpha 8, rank 4), PEFT's folder (alpha 6, rank 4) and Lightricks' trainer's file."""
    from diffusers import LTX2Pipeline

    from lora_harness.bases.tiny_ltx2 import build_tiny_ltx2_pipeline
    from lora_harness.fixtures.adapter_writers import make_lora, write_adapter, write_diffusers_components

    folder = tmp_path_factory.mktemp("ltx2")
    lora = make_lora(build_tiny_ltx2_pipeline().transformer, seed=1, targets=ATTENTION)
    return {
        "diffusers": write_diffusers_components({"transformer": lora}, folder / "diffusers", 4, 8, LTX2Pipeline),
        "peft": write_adapter("peft", lora, folder / "peft", 4, 6),
        "ltx-trainer": lightricks_trainer_file(lora, folder / "lora_weights_step_02000.safetensors"),
    }


def test_each_layout_lands_whole_at_its_declared_scale_on_both_streams_and_the_reference_trains(pytester, adapters):
    given = [a for path in adapters.values() for a in ("--adapter", path)]
    # Every attention of a 48-wide twin is 5.7% of it: the budget is a real model's matter
    run = ("--adapter", "reference", *given, "--base-model", "tiny-ltx2", "--param-budget", "10%", *FAST, *MECHANICAL)
    pytester.runpytest_inprocess(*run)
    document = results(pytester)
    failed = [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"]
    assert not failed
    assert document["controls"]["status"] == "passed"
    assert document["base"]["family"] == "tiny (LTX-2-shaped)"
    records = {record["name"]: record for record in document["adapters"] if record["name"] != "reference"}
    # 2 blocks x 6 attentions (video, audio, their text, audio-to-video, video-to-audio) x 4 projections x A and B
    assert {record["tensors_applied"] for record in records.values()} == {2 * 6 * 4 * 2}
    assert all(record["tensors"] == record["tensors_applied"] for record in records.values())
    scales = {name: record["scale"] for name, record in records.items()}
    assert scales == {"pytorch_lora_weights.safetensors": 2.0, "peft": 1.5, "lora_weights_step_02000.safetensors": 1.0}
    assert records["lora_weights_step_02000.safetensors"]["family"] == "tiny LTX-2"
    budget = [r for r in document["results"] if r["check"] == "param_budget" and r["adapter"] == "peft"][0]
    assert {"av/audio-to-video", "av/video-to-audio", "av/audio-attn", "av/attn"} <= set(budget["details"]["per_block"])


def test_an_ltx2_adapter_on_wan_and_a_wan_adapter_on_ltx2_fail_wiring_naming_both(pytester, adapters, tmp_path):
    from diffusers import WanPipeline

    from lora_harness.bases.tiny_base import build_tiny_wan_pipeline
    from lora_harness.fixtures.adapter_writers import make_lora, write_diffusers_components

    message = wiring_failure(pytester, adapters["diffusers"], "tiny-wan")
    assert "made for tiny LTX-2 (video stream width 48), but the base is tiny Wan (transformer width 288)" in message
    wan = make_lora(build_tiny_wan_pipeline().transformer, seed=2, targets=ATTENTION)
    wan_file = write_diffusers_components({"transformer": wan}, tmp_path / "wan", 4, 4, WanPipeline)
    message = wiring_failure(pytester, wan_file, "tiny-ltx2")
    assert "made for tiny Wan (transformer width 288), but the base is tiny LTX-2 (video stream width 48)" in message
