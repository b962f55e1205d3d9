"""Qwen-Image and Z-Image as users bring them: the embedded tiny twins (`tiny-qwen-image`, `tiny-z-image`), each
family's reference overfit with its controls, adapters in diffusers' `save_lora_weights` layout, PEFT's folder and
the files musubi-tuner's own network code writes (`fixtures/trainer_files/`), each proven tensor by tensor at its
declared scale through the pipeline class's own conversion, and wrong-family controls both ways."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.test_families import MECHANICAL, wiring_failure
from tests.test_plugin import results

TRAINER_FILES = Path(__file__).parent.parent / "fixtures" / "trainer_files"
FAST = ("--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
# Modules per twin, two tensors each: Qwen-Image's reference and peft adapters train the 8 attention projections of
# 3 joint blocks; musubi trains every linear of a block but its modulation (14 per block). Z-Image: 4 attention
# projections in 2 main and 2 refiner blocks; musubi 7 linears in each main block (refiners and modulation excluded).
TENSORS = {
    "tiny-qwen-image": {"attention": 2 * 8 * 3, "musubi": 2 * 14 * 3},
    "tiny-z-image": {"attention": 2 * 4 * 4, "musubi": 2 * 7 * 2},
}
BUILDERS = {"tiny-qwen-image": "build_tiny_qwen_image_pipeline", "tiny-z-image": "build_tiny_z_image_pipeline"}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Per base: diffusers' layout as the pipeline class's `save_lora_weights` writes it (alpha 8, rank 4), PEFT's
    folder (alpha 6, rank 4) and musubi-tuner's file (alpha 1, rank 2)."""
    from lora_harness.bases import tiny_base
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_adapter, write_diffusers_components

    made = {}
    for base, builder in BUILDERS.items():
        folder = tmp_path_factory.mktemp(base)
        pipeline = getattr(tiny_base, builder)()
        loras = make_pipeline_lora(pipeline, seed=1)
        assert set(loras) == {"transformer"}  # the Qwen text encoders are not CLIP: trainers leave them alone
        made[base] = {
            "diffusers": write_diffusers_components(loras, folder / "diffusers", 4, 8, type(pipeline)),
            "peft": write_adapter("peft", loras["transformer"], folder / "peft", 4, 6),
            "kohya": TRAINER_FILES / f"musubi-{base.removeprefix('tiny-')}.safetensors",
        }
    return made


@pytest.mark.parametrize("base", list(BUILDERS))
def test_each_layout_lands_whole_at_its_declared_scale_and_the_reference_trains_with_its_controls(
    pytester, adapters, base
):
    given = [a for path in adapters[base].values() for a in ("--adapter", path)]
    pytester.runpytest_inprocess("--adapter", "reference", *given, "--base-model", base, *FAST, *MECHANICAL)
    document = results(pytester)
    failed = [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"]
    assert not failed
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    label = base.removeprefix("tiny-").replace("qwen-image", "Qwen-Image").replace("z-image", "Z-Image")
    assert document["base"]["family"] == f"tiny ({label}-shaped)"
    # Qwen-Image's pipeline guides only when given a negative prompt: its default is none.
    assert document["base"]["guidance_scale"] == {"tiny-qwen-image": None, "tiny-z-image": 5.0}[base]
    applied = {a["format"] if a["name"] != "reference" else "reference": a for a in document["adapters"]}
    assert set(applied) == {"reference", "diffusers", "peft", "kohya"}
    for layout, adapter in applied.items():
        expected = TENSORS[base]["musubi" if layout == "kohya" else "attention"]
        assert adapter["tensors_applied"] == adapter["tensors"] == expected, layout
        assert adapter["family"] == f"tiny {label}"
    # musubi's file declares alpha 1 / rank 2; diffusers' conversion bakes it into the values, and the proof
    # measures it back from what landed.
    scales = {layout: applied[layout]["scale"] for layout in ("diffusers", "peft", "kohya")}
    assert scales == {"diffusers": 2.0, "peft": 1.5, "kohya": 0.5}


def test_the_qwen_tokenizer_splits_qwen_image_s_template_as_qwen_s_vocabulary_does():
    """The pipeline drops the template's first tokens by position (34): they must be its whole system prompt."""
    from lora_harness.bases.tiny_base import build_tiny_qwen_image_pipeline

    pipeline = build_tiny_qwen_image_pipeline()
    dropped = pipeline.prompt_template_encode_start_idx
    text = pipeline.prompt_template_encode.format("a red cube")
    tokens = pipeline.tokenizer.convert_ids_to_tokens(pipeline.tokenizer(text).input_ids)
    assert tokens[:4] == ["<|im_start|>", "system", "Ċ", "Describe"]
    assert tokens[dropped - 3 : dropped + 1] == ["<|im_start|>", "user", "Ċ", "a"]


def test_adapters_on_each_other_s_base_fail_wiring_naming_both_families(pytester, adapters, write_lora):
    message = wiring_failure(pytester, adapters["tiny-qwen-image"]["diffusers"], "tiny-z-image")
    assert "made for tiny Qwen-Image (transformer width 192), but the base is tiny Z-Image (transformer width 224)" in (
        message
    )
    message = wiring_failure(pytester, adapters["tiny-z-image"]["diffusers"], "tiny-qwen-image")
    assert "made for tiny Z-Image (transformer width 224), but the base is tiny Qwen-Image (transformer width 192)" in (
        message
    )
    message = wiring_failure(pytester, write_lora("kohya", "sd1.safetensors"), "tiny-qwen-image")
    assert "made for tiny (cross-attention 32), but the base is tiny Qwen-Image (transformer width 192)" in message
    message = wiring_failure(pytester, adapters["tiny-z-image"]["peft"])
    assert "made for tiny Z-Image (transformer width 224), but the base is tiny (cross-attention 32)" in message


def test_a_module_the_pipeline_s_conversion_drops_fails_wiring_naming_it(pytester, tmp_path):
    """musubi's file with one module added that names no layer of Qwen-Image: diffusers would log it and go on."""
    tensors = load_file(TRAINER_FILES / "musubi-qwen-image.safetensors")
    stray = "lora_unet_transformer_blocks_0_attn_to_gate"
    tensors[f"{stray}.lora_down.weight"] = torch.ones(2, 192, dtype=torch.bfloat16)
    tensors[f"{stray}.lora_up.weight"] = torch.ones(192, 2, dtype=torch.bfloat16)
    save_file(tensors, tmp_path / "musubi-plus-stray.safetensors")
    message = wiring_failure(pytester, tmp_path / "musubi-plus-stray.safetensors", "tiny-qwen-image")
    assert stray in message


def test_a_musubi_file_on_the_other_family_s_base_fails_wiring(pytester):
    """musubi's Qwen-Image file on Z-Image: Z-Image's conversion keeps its names, which land on nothing there."""
    message = wiring_failure(pytester, TRAINER_FILES / "musubi-qwen-image.safetensors", "tiny-z-image")
    assert "tiny Qwen-Image" in message and "tiny Z-Image" in message


@pytest.mark.parametrize("base", list(BUILDERS))
def test_an_ai_toolkit_file_lands_whole_through_the_pipeline_s_own_conversion(pytester, adapters, base, tmp_path):
    """ai-toolkit's layout for Qwen-Image and Z-Image, written as its `save_lora` does: the PEFT names under
    `diffusion_model.`, float16, no alpha (so scale 1) and no metadata."""
    peft = load_file(Path(adapters[base]["peft"]) / "adapter_model.safetensors")
    tensors = {
        "diffusion_model." + key.removeprefix("base_model.model."): (2 * value if ".lora_B." in key else value).half()
        for key, value in peft.items()
    }
    save_file(tensors, tmp_path / "ai-toolkit.safetensors")
    pytester.runpytest_inprocess(
        "--adapter", tmp_path / "ai-toolkit.safetensors", "--base-model", base, *FAST, *MECHANICAL
    )
    document = results(pytester)
    assert [(r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    (adapter,) = document["adapters"]
    assert adapter["format"] == "diffusion-model" and adapter["scale"] == 1.0
    assert adapter["tensors_applied"] == adapter["tensors"] == TENSORS[base]["attention"]
