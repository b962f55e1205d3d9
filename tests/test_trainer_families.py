"""The families whose pipelines convert their trainers' layouts themselves (Qwen-Image, Z-Image, Flux.2), as users
bring them: the embedded tiny twins, each family's reference overfit with its controls, adapters in diffusers'
`save_lora_weights` layout, PEFT's folder, the files musubi-tuner's and ai-toolkit's own code writes
(`fixtures/trainer_files/`) and ai-toolkit's layout written here, each proven at its declared scale through the pipeline class's own
conversion, and wrong-family controls both ways."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers import MECHANICAL, results, wiring_failure

TRAINER_FILES = Path(__file__).parent.parent / "fixtures" / "trainer_files"
FAST = ("--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
# Modules per twin, two tensors each: Qwen-Image's reference and peft adapters train the 8 attention projections of
# 3 joint blocks; musubi trains every linear of a block but its modulation (14 per block). Z-Image: 4 attention
# projections in 2 main and 2 refiner blocks; musubi 7 linears in each main block (refiners and modulation excluded).
# Flux.2: 8 attention projections of its one double-stream block; musubi trains every linear of both blocks but
# modulation and norms, in BFL's names (fused qkv, linear1): 10 modules.
TENSORS = {
    "tiny-qwen-image": {"attention": 2 * 8 * 3, "musubi": 2 * 14 * 3},
    "tiny-z-image": {"attention": 2 * 4 * 4, "musubi": 2 * 7 * 2},
    "tiny-flux2": {"attention": 2 * 8, "musubi": 2 * 10},
    "tiny-wan": {"attention": 2 * 8 * 2, "musubi": 2 * 10 * 2},
}
BUILDERS = {
    "tiny-qwen-image": "build_tiny_qwen_image_pipeline",
    "tiny-z-image": "build_tiny_z_image_pipeline",
    "tiny-flux2": "build_tiny_flux2_pipeline",
    "tiny-wan": "build_tiny_wan_pipeline",
}
LABELS = {"tiny-qwen-image": "Qwen-Image", "tiny-z-image": "Z-Image", "tiny-flux2": "Flux.2", "tiny-wan": "Wan"}
GUIDANCE = {"tiny-qwen-image": None, "tiny-z-image": 5.0, "tiny-flux2": 4.0, "tiny-wan": 5.0}
MUSUBI_FORMAT = {"tiny-qwen-image": "kohya", "tiny-z-image": "kohya", "tiny-flux2": "kohya-flux", "tiny-wan": "kohya"}
# Where ai-toolkit names the original modules (after its own conversion), musubi's names dotted: Kohya's
# underscores -> the module path.
ORIGINAL_NAMES = {
    "tiny-flux2": ((r"^(double|single)_blocks_(\d+)_", r"\1_blocks.\2."), (r"_(attn|mlp)_", r"_\1.")),
    "tiny-wan": (
        (r"^blocks_(\d+)_", r"blocks.\1."),
        (r"^(blocks\.\d+\.)(self|cross)_attn_", r"\1\2_attn."),
        (r"ffn_", "ffn."),
    ),
}


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
    label = LABELS[base]
    assert document["base"]["family"] == f"tiny ({label}-shaped)"
    # Qwen-Image's pipeline guides only when given a negative prompt: its default is none.
    assert document["base"]["guidance_scale"] == GUIDANCE[base]
    musubi = MUSUBI_FORMAT[base]
    applied = {a["format"] if a["name"] != "reference" else "reference": a for a in document["adapters"]}
    assert set(applied) == {"reference", "diffusers", "peft", musubi}
    for layout, adapter in applied.items():
        expected = TENSORS[base]["musubi" if layout == musubi else "attention"]
        assert adapter["tensors_applied"] == adapter["tensors"] == expected, layout
        assert adapter["family"] == f"tiny {label}"
    # musubi's file declares alpha 1 / rank 2; diffusers' conversion bakes it into the values, and the proof
    # measures it back from what landed.
    scales = {layout: applied[layout]["scale"] for layout in ("diffusers", "peft", musubi)}
    assert scales == {"diffusers": 2.0, "peft": 1.5, musubi: 0.5}


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
    assert (
        "made for tiny SD1.x (cross-attention 32), but the base is tiny Qwen-Image (transformer width 192)" in message
    )
    message = wiring_failure(pytester, adapters["tiny-z-image"]["peft"])
    assert "made for tiny Z-Image (transformer width 224), but the base is tiny SD1.x (cross-attention 32)" in message


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


def ai_toolkit_tensors(base: str, peft_folder: Path) -> dict[str, torch.Tensor]:
    """ai-toolkit's layout, as its `save_lora` writes it: float16, no alpha (so scale 1), no metadata, under
    `diffusion_model.`; diffusers' module names for Qwen-Image and Z-Image, the original ones for Flux.2 (BFL's) and
    Wan after its own conversion (musubi's modules, dotted, with PEFT's factor names)."""
    if base in ORIGINAL_NAMES:
        tensors = {}
        for key, value in load_file(TRAINER_FILES / f"musubi-{base.removeprefix('tiny-')}.safetensors").items():
            if key.endswith(".alpha"):
                continue
            module, factor = key.removeprefix("lora_unet_").split(".lora_")
            for pattern, replacement in ORIGINAL_NAMES[base]:
                module = re.sub(pattern, replacement, module)  # double_blocks.0.img_attn.qkv; blocks.0.self_attn.q
            tensors[f"diffusion_model.{module}.{'lora_A' if factor == 'down.weight' else 'lora_B'}.weight"] = value
    else:
        peft = load_file(peft_folder / "adapter_model.safetensors")
        tensors = {"diffusion_model." + key.removeprefix("base_model.model."): value for key, value in peft.items()}
    return {key: (2 * value if ".lora_B." in key else value).half().contiguous() for key, value in tensors.items()}


@pytest.mark.parametrize("base", list(BUILDERS))
def test_an_ai_toolkit_file_lands_whole_through_the_pipeline_s_own_conversion(pytester, adapters, base, tmp_path):
    save_file(ai_toolkit_tensors(base, Path(adapters[base]["peft"])), tmp_path / "ai-toolkit.safetensors")
    pytester.runpytest_inprocess(
        "--adapter", tmp_path / "ai-toolkit.safetensors", "--base-model", base, *FAST, *MECHANICAL
    )
    document = results(pytester)
    assert [(r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    (adapter,) = document["adapters"]
    assert adapter["scale"] == 1.0 and adapter["family"] == f"tiny {LABELS[base]}"
    expected = TENSORS[base]["musubi" if base in ORIGINAL_NAMES else "attention"]
    assert adapter["tensors_applied"] == adapter["tensors"] == expected


def test_flux2_dev_takes_klein_s_files_at_their_scales_and_trains_its_reference_with_its_controls(
    pytester, adapters, tmp_path
):
    """FLUX.2 dev (`Flux2Pipeline`: Mistral 3's hidden states, guidance distilled into the transformer) has Klein's
    transformer layout, so the files the trainers write for Klein (diffusers', PEFT's, musubi's, ai-toolkit's) are
    the files for dev: on the dev twin each lands whole at its declared scale through Flux2Pipeline's own conversion,
    and its reference overfit trains with the guidance embedded and passes its controls."""
    klein = adapters["tiny-flux2"]
    save_file(ai_toolkit_tensors("tiny-flux2", Path(klein["peft"])), tmp_path / "ai-toolkit.safetensors")
    given = [a for path in (*klein.values(), tmp_path / "ai-toolkit.safetensors") for a in ("--adapter", path)]
    pytester.runpytest_inprocess("--adapter", "reference", *given, "--base-model", "tiny-flux2-dev", *FAST, *MECHANICAL)
    document = results(pytester)
    assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    assert document["base"]["family"] == "tiny (Flux.2 dev-shaped)" and document["base"]["guidance_scale"] == 4.0
    applied = {
        a["name"] if a["name"] in ("reference", "ai-toolkit.safetensors") else a["format"]: a
        for a in document["adapters"]
    }
    assert {name: adapter["scale"] for name, adapter in applied.items() if name != "reference"} == {
        "diffusers": 2.0,
        "peft": 1.5,
        "kohya-flux": 0.5,
        "ai-toolkit.safetensors": 1.0,
    }
    for name, adapter in applied.items():
        expected = TENSORS["tiny-flux2"]["musubi" if name in ("kohya-flux", "ai-toolkit.safetensors") else "attention"]
        assert adapter["tensors_applied"] == adapter["tensors"] == expected, name
        assert adapter["family"] == "tiny Flux.2", name


def test_musubi_s_comfyui_z_image_file_of_fused_block_diagonal_qkv_lands_and_renders_as_its_source(pytester):
    """musubi's own converter to ComfyUI's layout (`networks/convert_z_image_lora_to_comfy.py`, run on the musubi file
    kept beside it) fuses each block's q, k and v LoRAs into one `attention_qkv` of three times the rank, its up
    matrix block-diagonal and alpha tripled. ZImagePipeline's conversion lands it whole at the source's scale, and
    its renders are the source's."""
    comfy, source = TRAINER_FILES / "musubi-z-image-comfy.safetensors", TRAINER_FILES / "musubi-z-image.safetensors"
    fused = load_file(comfy)
    up = fused["lora_unet_layers_0_attention_qkv.lora_up.weight"].float()
    assert fused["lora_unet_layers_0_attention_qkv.lora_down.weight"].shape == (3 * 2, 224) and up.shape == (3 * 224, 6)
    assert not up[:224, 2:].any() and not up[224:448, :2].any() and not up[224:448, 4:].any()  # block-diagonal
    pytester.runpytest_inprocess(
        "--adapter",
        comfy,
        "--adapter",
        source,
        "--base-model",
        "tiny-z-image",
        *FAST,
        "--reference-steps",
        "0",
        *MECHANICAL,
    )
    document = results(pytester)
    assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    applied = {a["name"]: a for a in document["adapters"]}
    assert applied[comfy.name]["tensors_applied"] == applied[comfy.name]["tensors"] == 20  # 10 modules, q, k, v as one
    assert applied[comfy.name]["scale"] == applied[source.name]["scale"] == 0.5  # alpha 3 / rank 6; alpha 1 / rank 2
    pixel_diff = {r["adapter"]: r["value"] for r in document["results"] if r["check"] == "pixel_diff"}
    assert pixel_diff[comfy.name] == pytest.approx(pixel_diff[source.name], rel=1e-4)


# The files ai-toolkit's own network and model classes write (`fixtures/trainer_files/write_ai_toolkit.py`, ai-toolkit
# 27a03a9): PEFT's factor names under `diffusion_model.`, no alpha (ai-toolkit sets it to the rank: scale 1), float16,
# its trainer's metadata. Tensors: Z-Image's 16 modules of its main blocks (attention, feed-forward, adaLN), Wan's 20
# (self- and cross-attention, ffn, in Wan's own names), Flux.2's 10 in BFL's names (fused qkv, linear1), Qwen-Image's
# 42 (attention, MLPs and the modulations of 3 blocks).
AI_TOOLKIT_FILES = {"tiny-z-image": 32, "tiny-wan": 40, "tiny-flux2": 20, "tiny-qwen-image": 84}


@pytest.mark.parametrize("base", list(AI_TOOLKIT_FILES))
def test_the_file_ai_toolkit_s_own_code_writes_lands_whole_at_scale_one(pytester, base):
    path = TRAINER_FILES / f"ai-toolkit-{base.removeprefix('tiny-')}.safetensors"
    checks = (MECHANICAL[0], f"{MECHANICAL[1]} or release_metadata")
    pytester.runpytest_inprocess("--adapter", path, "--base-model", base, *FAST, "--reference-steps", "0", *checks)
    document = results(pytester)
    assert [(r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    (adapter,) = document["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] == AI_TOOLKIT_FILES[base] and adapter["scale"] == 1.0
    metadata = next(r for r in document["results"] if r["check"] == "release_metadata")
    assert metadata["details"]["claimed_family"] == LABELS[base]  # from ss_base_model_version: zimage, wan_2.1, …


def test_ai_toolkit_s_wan22_pair_lands_each_file_on_its_expert(pytester):
    """ai-toolkit's Wan 2.2 model saves its two experts' LoRA as `<name>_high_noise` and `<name>_low_noise`
    (`split_multistage_loras`): on the two-expert twin each lands whole on its own transformer. At four steps each
    expert renders two, so the low-noise file's effect shows (at two, its expert runs only the last step)."""
    pair = [TRAINER_FILES / f"ai-toolkit-wan22_{expert}_noise.safetensors" for expert in ("high", "low")]
    given = [a for path in pair for a in ("--adapter", path)]
    steps = ("--render-seeds", "1", "--render-steps", "4", "--reference-steps", "0", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess(*given, "--base-model", "tiny-wan22", *steps, *MECHANICAL)
    document = results(pytester)
    assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    applied = {a["name"]: a for a in document["adapters"]}
    for path, component in zip(pair, ("transformer", "transformer_2")):
        assert applied[path.name]["details"]["components"] == [component]
        assert applied[path.name]["tensors_applied"] == applied[path.name]["tensors"] == 40


def test_wan_bias_differences_land_as_lora_biases_and_a_norm_difference_diffusers_drops_fails_wiring(
    pytester, adapters, tmp_path
):
    """Wan's distillation LoRAs (lightx2v's, CausVid's) carry each layer's bias difference (`.diff_b`, 1-D) beside its
    factors, and a norm's weight difference (`.diff`): diffusers' Wan conversion lands the first as the layer's LoRA
    bias and drops the second, logging it. A valid file either way, never called damaged."""
    tensors = ai_toolkit_tensors("tiny-wan", Path(adapters["tiny-wan"]["peft"]))
    generator = torch.Generator().manual_seed(3)
    for up in [key for key in tensors if key.endswith(".lora_B.weight")]:
        rows = tensors[up].shape[0]
        tensors[up.replace(".lora_B.weight", ".diff_b")] = (torch.randn(rows, generator=generator) / 100).half()
    save_file(tensors, tmp_path / "wan-distill.safetensors")
    pytester.runpytest_inprocess(
        "--adapter", tmp_path / "wan-distill.safetensors", "--base-model", "tiny-wan", *FAST, *MECHANICAL
    )
    document = results(pytester)
    assert [(r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    (adapter,) = document["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] == TENSORS["tiny-wan"]["musubi"] * 3 // 2
    budget = next(r for r in document["results"] if r["check"] == "param_budget")
    assert budget["value"] == sum(tensor.numel() for tensor in tensors.values())

    tensors["diffusion_model.blocks.0.norm3.diff"] = torch.zeros(288, dtype=torch.float16)
    save_file(tensors, tmp_path / "wan-distill-norm.safetensors")
    message = wiring_failure(pytester, tmp_path / "wan-distill-norm.safetensors", "tiny-wan")
    assert "diffusion_model.blocks.0.norm3.diff -> nothing: the base's loader applies none of it" in message
    dropped = (
        "the base's own loader drops them (diffusers logs them and goes on), and lora-harness will not check a partial "
        "load: export the adapter without them"
    )
    assert dropped in message
    assert "damaged" not in message


def test_flux2_and_flux1_files_in_bfl_names_on_each_other_s_base_fail_wiring_naming_both(pytester, tmp_path):
    """Flux.1 and Flux.2 trainers both write BFL's module names (`lora_unet_double_blocks_0_img_attn_qkv`): each
    family's own conversion reads them, and the width tells the families apart."""
    from lora_harness.bases.tiny_base import build_tiny_flux_pipeline
    from lora_harness.fixtures.adapter_writers import write_flux_community

    flux1 = write_flux_community(build_tiny_flux_pipeline(), tmp_path / "kohya-flux1.safetensors", seed=1)
    message = wiring_failure(pytester, flux1, "tiny-flux2")
    assert "made for tiny Flux (transformer width 96), but the base is tiny Flux.2 (transformer width 256)" in message
    message = wiring_failure(pytester, TRAINER_FILES / "musubi-flux2.safetensors", "tiny-flux")
    assert "tiny Flux.2 (transformer width 256)" in message and "tiny Flux (transformer width 96)" in message


def test_wan_and_image_family_adapters_on_each_other_s_base_fail_wiring_naming_both(pytester, adapters, write_lora):
    message = wiring_failure(pytester, adapters["tiny-wan"]["diffusers"], "tiny-qwen-image")
    assert (
        "made for tiny Wan (transformer width 288), but the base is tiny Qwen-Image (transformer width 192)" in message
    )
    message = wiring_failure(pytester, write_lora("kohya", "sd1.safetensors"), "tiny-wan")
    assert "made for tiny SD1.x (cross-attention 32), but the base is tiny Wan (transformer width 288)" in message
    message = wiring_failure(pytester, adapters["tiny-wan"]["peft"])
    assert "made for tiny Wan (transformer width 288), but the base is tiny SD1.x (cross-attention 32)" in message


def test_wan22_files_land_on_the_expert_they_are_named_for_and_the_reference_trains_on_the_two_expert_twin(
    pytester, adapters, tmp_path
):
    """Wan 2.2's two experts: a file named for the low-noise one (ai-toolkit's `<name>_low_noise`, lightx2v's
    `low_noise_model`) lands whole on `transformer_2`, where diffusers' `load_into_transformer_2=True` puts it; its
    `_high_noise` twin, like any other file, on `transformer`, diffusers' default. At four steps each expert renders
    two, so each file's effect shows. A one-expert base (Wan 2.1) takes a low-noise file on its one transformer."""
    shutil.copy(TRAINER_FILES / "musubi-wan.safetensors", tmp_path / "style_high_noise.safetensors")
    shutil.copy(Path(adapters["tiny-wan"]["diffusers"]), tmp_path / "style_low_noise.safetensors")
    save_file(
        ai_toolkit_tensors("tiny-wan", Path(adapters["tiny-wan"]["peft"])), tmp_path / "low_noise_model.safetensors"
    )
    files = ["style_high_noise.safetensors", "style_low_noise.safetensors", "low_noise_model.safetensors"]
    given = [a for name in files for a in ("--adapter", tmp_path / name)]
    steps = ("--render-seeds", "1", "--render-steps", "4", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess("--adapter", "reference", *given, "--base-model", "tiny-wan22", *steps, *MECHANICAL)
    document = results(pytester)
    assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    assert document["base"]["family"] == "tiny (Wan 2.2-shaped, two experts)"
    applied = {a["name"]: a for a in document["adapters"]}
    expected = {
        "reference": "transformer",
        files[0]: "transformer",
        files[1]: "transformer_2",
        files[2]: "transformer_2",
    }
    for name, component in expected.items():
        assert applied[name]["details"]["components"] == [component], name
        assert applied[name]["tensors_applied"] == applied[name]["tensors"] > 0, name
        assert applied[name]["family"] == "tiny Wan", name

    pytester.runpytest_inprocess("--adapter", tmp_path / files[1], "--base-model", "tiny-wan", *FAST, "-k", "wiring")
    (adapter,) = results(pytester)["adapters"]
    assert adapter["details"]["components"] == ["transformer"] and adapter["tensors_applied"] == adapter["tensors"]


def test_a_wan22_file_holding_both_experts_is_named_for_what_it_is(pytester, adapters, tmp_path):
    """ai-toolkit without `split_multistage_loras` writes both experts' modules in one file, under
    `diffusion_model.transformer_1.` and `.transformer_2.`: a valid file diffusers does not load, named as such."""
    tensors = ai_toolkit_tensors("tiny-wan", Path(adapters["tiny-wan"]["peft"]))
    both = {
        key.replace("diffusion_model.", f"diffusion_model.transformer_{expert}."): value.clone()
        for key, value in tensors.items()
        for expert in (1, 2)
    }
    save_file(both, tmp_path / "style.safetensors")
    message = wiring_failure(pytester, tmp_path / "style.safetensors", "tiny-wan22")
    assert "a Wan 2.2 LoRA holding both experts in one file" in message and "_low_noise.safetensors" in message
    assert "damaged" not in message


def lokr_tensors(transformer, layers, rank, alpha, both_full, prefix="", dtype=torch.float16, seed=1) -> dict:
    """A LoKr on the transformer's `layers`, laid out as ai-toolkit's LoKr network saves it (its `LokrModule`, "based
    heavily on" LyCORIS's, makes the same factors; LyCORIS's builds them here): `<prefix><module>.lokr_w1`, `lokr_w2`
    or `lokr_w2_a`/`_b`, `.alpha`, seeded values. `both_full` is ai-toolkit's default (`lokr_full_rank`), whose rank
    and alpha are 9999999999: in float16 the alpha is stored as infinity."""
    from lycoris.modules import LokrModule

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, layer in transformer.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(layers):
            module = LokrModule(name, layer, 1, rank, alpha, full_matrix=both_full)
            for role, value in module.state_dict().items():
                if role.startswith("lokr_"):
                    value = torch.randn(value.shape, generator=generator) * 0.3
                tensors[f"{prefix}{name}.{role}"] = value.to(dtype).contiguous()
    return tensors


ZIMAGE_ATTENTION = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")
FLUX2_ATTENTION = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out")


def test_lokr_files_the_pipeline_converts_land_in_peft_s_lokr_layers_at_their_declared_scale(pytester, tmp_path):
    """LoKr files diffusers converts and loads into peft's LoKr layers: ai-toolkit's Z-Image files
    (`diffusion_model.<module>.lokr_w1`, float16), both factors full (its default; applied at 1) and w2 decomposed
    (rank 4, alpha 2: the conversion bakes 0.5 into w1, measured back), and SimpleTuner's bare module paths on
    Flux.2 (bfloat16). Each tensor is found in its layer, the scale measured equals the declared one."""
    from lora_harness.bases.tiny_base import build_tiny_flux2_pipeline, build_tiny_z_image_pipeline

    z_image = build_tiny_z_image_pipeline().transformer
    save_file(
        lokr_tensors(z_image, ZIMAGE_ATTENTION, 10**10, 10**10, True, "diffusion_model."), tmp_path / "full.safetensors"
    )
    save_file(lokr_tensors(z_image, ZIMAGE_ATTENTION, 4, 2, False, "diffusion_model."), tmp_path / "rank4.safetensors")
    flux2 = build_tiny_flux2_pipeline().transformer
    save_file(lokr_tensors(flux2, FLUX2_ATTENTION, 4, 2, False, dtype=torch.bfloat16), tmp_path / "flux2.safetensors")
    expected = {  # file -> (base, format, scale, tensors)
        "full.safetensors": ("tiny-z-image", "diffusion-model", 1.0, 2 * 16),
        "rank4.safetensors": ("tiny-z-image", "diffusion-model", 0.5, 3 * 16),
        "flux2.safetensors": ("tiny-flux2", "module-paths", 0.5, 3 * 6),
    }
    for base in ("tiny-z-image", "tiny-flux2"):
        given = [a for name, (on, *_) in expected.items() if on == base for a in ("--adapter", tmp_path / name)]
        pytester.runpytest_inprocess(*given, "--base-model", base, *FAST, *MECHANICAL)
        document = results(pytester)
        assert [(r["adapter"], r["check"], r["message"]) for r in document["results"] if r["status"] != "passed"] == []
        for adapter in document["adapters"]:
            _, layout, scale, tensors = expected[adapter["name"]]
            assert (adapter["kind"], adapter["format"], adapter["scale"]) == ("LoKr", layout, scale), adapter["name"]
            assert adapter["tensors_applied"] == adapter["tensors"] == tensors, adapter["name"]
            assert adapter["family"] == f"tiny {LABELS[base]}"


def test_a_lokr_of_the_wrong_shape_fails_wiring_and_one_on_bfl_s_fused_qkv_is_named(pytester, tmp_path):
    """One module whose kron(w1, w2) is not its layer's shape is refused, named, as is a NaN factor; a Flux.2 LoKr on BFL's fused qkv
    (as ai-toolkit writes Flux.2's) would make diffusers fuse the base's q, k and v: named, not applied, not called
    damaged."""
    from lora_harness.bases.tiny_base import build_tiny_z_image_pipeline

    tensors = lokr_tensors(build_tiny_z_image_pipeline().transformer, ZIMAGE_ATTENTION, 4, 2, False, "diffusion_model.")
    first = next(key for key in tensors if key.endswith(".lokr_w1"))
    tensors[first] = tensors[first][:7].contiguous()
    save_file(tensors, tmp_path / "cut.safetensors")
    message = wiring_failure(pytester, tmp_path / "cut.safetensors", "tiny-z-image")
    assert f"3 shapes disagree, first {first}: base needs (224, 224), file has (112, 224)" in message
    tensors[first] = torch.full((14, 14), float("nan"), dtype=torch.float16)
    save_file(tensors, tmp_path / "nan.safetensors")
    message = wiring_failure(pytester, tmp_path / "nan.safetensors", "tiny-z-image")
    assert f"tensor {first} holds NaN or Inf" in message

    bfl = {
        f"diffusion_model.double_blocks.0.img_attn.qkv.{role}": value
        for role, value in (
            ("lokr_w1", torch.randn(16, 16)),
            ("lokr_w2", torch.randn(48, 16)),
            ("alpha", torch.tensor(1.0)),
        )
    }
    save_file(bfl, tmp_path / "bfl.safetensors")
    message = wiring_failure(pytester, tmp_path / "bfl.safetensors", "tiny-flux2")
    assert "a LoKr on the fused q, k, v projection BFL's model has (`transformer_blocks.0.attn.to_qkv`)" in message
    assert "damaged" not in message


def test_a_video_render_is_a_strip_of_every_frame_and_render_frames_sets_their_count(pytester, adapters):
    """`--render-frames 9` on the Wan twin: each render holds 9 frames side by side, pixel_diff and its controls
    compare them all, and results.json says how many."""
    pytester.runpytest_inprocess(
        "--adapter",
        adapters["tiny-wan"]["kohya"],
        "--base-model",
        "tiny-wan",
        "--render-frames",
        "9",
        *FAST,
        "-k",
        "pixel_diff",
    ).assert_outcomes(passed=1)
    document = results(pytester)
    assert document["settings"]["render_frames"] == 9
    strip = next((pytester.path / "lora-report" / "images").rglob("*-seed0.png"))
    from PIL import Image

    assert Image.open(strip).size == (9 * 64, 64)


def test_a_video_s_features_are_its_frames_mean_each_frame_encoded_as_an_image():
    import numpy as np

    from lora_harness.rendering.renders import RenderSet

    frames = np.stack([np.full((4, 4, 3), value, np.uint8) for value in (10, 20, 30)])  # one job, 3 frames
    strip = frames.transpose(1, 0, 2, 3).reshape(1, 4, 12, 3)
    rendered = RenderSet(images=strip, jobs=[("p", 0)], frames=3)

    def encode(images):  # one feature per image: its mean value, and how many images it was given
        return torch.tensor([[float(image.mean()), len(images)] for image in images])

    assert rendered.features(encode).tolist() == [[20.0, 3.0]]


def test_an_untrained_fused_module_is_traced_into_the_rows_it_fills_not_refused():
    """musubi's Flux.2 file with one fused qkv module's up matrix all zero (untrained): each of q, k, v is traced to
    its block of rows, so the zero up is reported as untrained instead of the file being refused."""
    from lora_harness.bases.tiny_base import build_tiny_flux2_pipeline
    from lora_harness.loading.traced_conversion import trace

    tensors = load_file(TRAINER_FILES / "musubi-flux2.safetensors")
    tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].zero_()
    traced = trace(tensors, build_tiny_flux2_pipeline())
    assert traced.invented == [] and traced.dropped == []
    fused = traced.modules["lora_unet_double_blocks_0_img_attn_qkv"]
    assert fused.layers == tuple(f"transformer_blocks.0.attn.to_{p}" for p in "qkv")
