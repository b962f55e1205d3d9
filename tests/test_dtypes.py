"""`--dtype`: bases stored in float16 and bfloat16, as published ones are, computed in one dtype with every
adapter's layers; the proof compares what landed with the file's values as that dtype holds them."""

import json

import pytest
import torch

from tests.helpers import FAST, MECHANICAL, offloaded_config, results
from tests.single_file_checkpoints import narrow_configs, seeded_models

FAMILIES = ("tiny", "tiny-sdxl", "tiny-flux", "tiny-sd3")
# Rank 4 on the denoiser and every CLIP text encoder: SDXL's is 1.99% of its tiny U-Net, at the 2% default's edge.
BUDGET = ("--param-budget", "5%")


def _pipeline(family: str):
    from lora_harness.bases import tiny_base

    builders = {
        "tiny": tiny_base.build_tiny_pipeline,
        "tiny-sdxl": tiny_base.build_tiny_sdxl_pipeline,
        "tiny-flux": tiny_base.build_tiny_flux_pipeline,
        "tiny-sd3": tiny_base.build_tiny_sd3_pipeline,
    }
    return builders[family]()


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """stored(family, dtype) -> (base folder in that dtype, a diffusers-layout adapter for it with its CLIP text
    encoders, written in float32 as training scripts save it); built once per family and dtype."""
    from lora_harness.fixtures.adapter_writers import make_pipeline_lora, write_diffusers_components
    from lora_harness.fixtures.family_bases import save_base

    made = {}

    def get(family: str, dtype: torch.dtype):
        if (family, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"{family}-{str(dtype).removeprefix('torch.')}")
            pipeline = _pipeline(family)
            loras = make_pipeline_lora(pipeline, seed=1)
            adapter = write_diffusers_components(loras, folder / "adapter", 4, 8, type(pipeline))
            made[(family, dtype)] = save_base(pipeline, folder / "base", dtype), adapter
        return made[(family, dtype)]

    return get


def _applied_whole(document) -> dict:
    (adapter,) = document["adapters"]
    assert adapter["tensors_applied"] == adapter["tensors"] > 0, adapter.get("defects")
    return adapter


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_half_precision_folder_of_each_family_passes_computed_in_float32_on_the_cpu(pytester, stored, family, dtype):
    """Without `--dtype` diffusers loads the denoiser in float32 and transformers the text encoders as stored: every
    render failed with `mat1 and mat2 must have the same dtype, but got Half and Float`."""
    base, adapter = stored(family, dtype)
    result = pytester.runpytest_inprocess("--adapter", adapter, "--base-model", base, *FAST, *MECHANICAL, *BUDGET)
    result.assert_outcomes(passed=5)
    document = results(pytester)
    name = str(dtype).removeprefix("torch.")
    assert document["settings"]["dtype"] == document["base"]["dtype"] == "float32"
    assert document["settings"]["dtype_choice"] == f"--dtype auto on cpu: float32; the base is stored in {name}"
    _applied_whole(document)
    assert f"the base is stored in {name}" in (pytester.path / "lora-report" / "report.html").read_text()


@pytest.mark.parametrize(
    "family, dtype",
    [
        ("tiny", torch.float16),
        ("tiny-sdxl", torch.float16),
        ("tiny-flux", torch.bfloat16),
        ("tiny-sd3", torch.bfloat16),
    ],
    ids=["tiny-float16", "tiny-sdxl-float16", "tiny-flux-bfloat16", "tiny-sd3-bfloat16"],
)
def test_computing_in_the_stored_half_dtype_lands_every_float32_tensor_rounded_to_it(pytester, stored, family, dtype):
    """The injected layers follow the base's dtype, so a float32 file lands rounded: proven against its values
    rounded once to that dtype (compared in float32 every tensor looked changed: 0 applied)."""
    base, adapter = stored(family, dtype)
    name = str(dtype).removeprefix("torch.")
    args = ("--adapter", adapter, "--base-model", base, "--dtype", name)
    result = pytester.runpytest_inprocess(*args, *FAST, *MECHANICAL, *BUDGET)
    result.assert_outcomes(passed=5)
    document = results(pytester)
    assert document["settings"]["dtype"] == document["base"]["dtype"] == name
    assert document["settings"]["dtype_choice"] == f"--dtype {name}; the base is stored in {name}"
    _applied_whole(document)


def test_the_reference_overfit_trains_on_a_float16_base_and_its_controls_hold(pytester):
    """The training noise is drawn in the base's dtype (float32 noise promoted the U-Net's inputs and failed)."""
    args = ("--adapter", "reference", "--dtype", "float16", "--render-seeds", "1", "-p", "no:cacheprovider")
    pytester.runpytest_inprocess(*args, "-k", "wiring or pixel_diff").assert_outcomes(passed=2)
    document = results(pytester)
    assert document["controls"]["status"] == "passed", document["controls"]["message"]
    assert document["base"]["dtype"] == "float16"
    _applied_whole(document)


def test_a_value_that_landed_one_step_off_in_float16_is_caught(write_lora, monkeypatch):
    """Rounding to the layer's dtype is the only difference allowed: the next float16 value is a changed tensor."""
    import lora_harness.loading.peft_injection as peft_injection
    from lora_harness.bases.families import pipeline_signature
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.kinds import apply_adapter

    pipeline = build_tiny_pipeline().to(dtype=torch.float16)
    real_inject = peft_injection.inject
    nudged = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"

    def inject_then_nudge(pipeline, normalized, accepted, adapter_name):
        real_inject(pipeline, normalized, accepted, adapter_name)
        weight = pipeline.unet.get_submodule(nudged.removeprefix("unet.")).lora_B[adapter_name].weight
        with torch.no_grad():
            weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(torch.inf, dtype=weight.dtype))

    monkeypatch.setattr(peft_injection, "inject", inject_then_nudge)
    path = write_lora("kohya", "nudged.safetensors")
    application = apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(path), "a")
    assert {layer.lora_A["a"].weight.dtype for layer in application.lora_layers.values()} == {torch.float16}
    nudged_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"
    assert application.value_mismatches == [nudged_key]
    assert application.tensors_applied == application.tensors - 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_a_kohya_flux_file_on_a_half_precision_base_is_proven_to_the_coarser_dtype(tmp_path, dtype):
    """diffusers bakes alpha into the factors it rewrites, then they land rounded to the base's dtype: the measured
    scale is trusted to one eps of the coarser of the file's and the base's dtype (float32's: 0 of 40 applied)."""
    from lora_harness.bases.families import pipeline_signature
    from lora_harness.bases.tiny_base import build_tiny_flux_pipeline
    from lora_harness.fixtures.adapter_writers import write_flux_community
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.kinds import apply_adapter

    pipeline = build_tiny_flux_pipeline()
    single = ("linear2", "modulation.lin")
    path = write_flux_community(pipeline, tmp_path / "kohya.safetensors", "kohya", single=single, text_encoder=True)
    pipeline.to(dtype=dtype)
    application = apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(path), "a")
    assert application.tensors_applied == application.tensors == 40 and not application.scale_mismatches
    assert application.scale == pytest.approx(0.5, rel=torch.finfo(dtype).eps)


def test_auto_is_the_stored_dtype_on_cuda_and_float32_elsewhere(stored):
    """Resolved from the folder's safetensors headers, before any weight is read; no GPU is needed to decide."""
    from lora_harness.bases.base import resolve_dtype

    base, _ = stored("tiny", torch.float16)
    on_cuda = ("float16", "--dtype auto on cuda:1: the base's stored dtype")
    assert resolve_dtype("auto", "cuda:1", str(base), base) == on_cuda
    assert resolve_dtype("auto", "cpu", str(base), base)[0] == "float32"
    embedded = ("bfloat16", "--dtype bfloat16; the base is stored in float32")
    assert resolve_dtype("bfloat16", "cpu", "tiny", None) == embedded


def test_the_ini_twin_sets_the_dtype_and_the_command_line_wins(pytester, write_lora):
    import shutil

    # Inside the run's folder, or pytest takes the files' common ancestor as its rootdir and never sees the ini.
    adapter = shutil.copy(write_lora("kohya", "a.safetensors"), pytester.path)
    pytester.makeini("[pytest]\nlora_dtype = bfloat16\n")
    pytester.runpytest_inprocess("--adapter", adapter, *FAST, "-k", "param_budget").assert_outcomes(passed=1)
    assert results(pytester)["settings"]["dtype"] == "bfloat16"
    result = pytester.runpytest_inprocess("--adapter", adapter, "--dtype", "float32", *FAST, "-k", "param_budget")
    result.assert_outcomes(passed=1)
    assert results(pytester)["settings"]["dtype"] == "float32"


@pytest.mark.parametrize(
    "args, setup, message",
    [
        (("--dtype", "fp8"), None, "*--dtype (ini lora_dtype) must be auto, float32, float16 or bfloat16, got 'fp8'*"),
        (
            ("--base-model", "bins"),
            {
                "bins/model_index.json": json.dumps(
                    {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
                ),
                "bins/unet/diffusion_pytorch_model.bin": "x",
            },
            "*--base-model bins: *bins/unet holds no .safetensors weights; lora-harness reads safetensors only*",
        ),
    ],
)
def test_a_bad_dtype_or_a_base_without_safetensors_is_a_usage_error(pytester, args, setup, message):
    for name, content in (setup or {}).items():
        (pytester.path / name).parent.mkdir(parents=True, exist_ok=True)
        (pytester.path / name).write_text(content)
    result = pytester.runpytest_inprocess("--adapter", "x.safetensors", *args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "loading base model" not in result.stdout.str()


# --- SD1.x and SD2.x folders at their real block layout (four U-Net blocks of two layers; SD2.x's 1024-wide OpenCLIP-H
# text states, linear projections, upcast attention, v-prediction) at narrow widths, stored in half precision as the
# published folders are: the narrow configs of `test_single_file.py`, saved as diffusers folders.


def real_layout_pipeline(folder, family: str):
    """A `family` StableDiffusionPipeline of the real block layout at narrow widths, seeded, in float32."""
    import copy

    import diffusers

    from lora_harness.bases.single_file import CARRIED
    from lora_harness.bases.tiny_base import clip_tokenizer

    configs = narrow_configs(folder / "configs", family)
    index = json.loads((configs / "model_index.json").read_text())
    tokenizer = copy.deepcopy(clip_tokenizer())
    tokenizer.pad_token = CARRIED[family].tokenizers["tokenizer"] or tokenizer.pad_token  # SD2's OpenCLIP pads with "!"
    return diffusers.StableDiffusionPipeline(
        **vars(seeded_models(configs)),
        tokenizer=tokenizer,
        scheduler=getattr(diffusers, index["scheduler"][1]).from_pretrained(configs, subfolder="scheduler"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def three_layouts(pipeline, folder) -> list:
    """A Kohya file and a diffusers `save_lora_weights` file, both with the text encoder, and a PEFT folder of the
    U-Net: the paths to pass as --adapter."""
    from lora_harness.fixtures.adapter_writers import (
        make_lora,
        make_pipeline_lora,
        write_diffusers_components,
        write_kohya_components,
        write_peft_folder,
    )

    return [
        write_kohya_components(make_pipeline_lora(pipeline, seed=1), folder / "kohya.safetensors", 4, 8),
        write_diffusers_components(make_pipeline_lora(pipeline, seed=2), folder / "diffusers", 4, 8),
        write_peft_folder(make_lora(pipeline.unet, seed=3), folder / "peft", 4, 8),
    ]


@pytest.mark.parametrize("family", ["SD1.x", "SD2.x"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_a_real_layout_half_precision_folder_passes_kohya_diffusers_and_peft_adapters(
    pytester, tmp_path, family, dtype
):
    from lora_harness.fixtures.family_bases import save_base

    pipeline = real_layout_pipeline(tmp_path, family)
    adapters = three_layouts(pipeline, tmp_path / "adapters")  # float32, as trainers save them
    base = save_base(pipeline, tmp_path / "base", dtype)
    given = [part for adapter in adapters for part in ("--adapter", adapter)]
    result = pytester.runpytest_inprocess(*given, "--base-model", base, *FAST, *MECHANICAL, "--param-budget", "10%")
    result.assert_outcomes(passed=3 * 5)
    document = results(pytester)
    name = str(dtype).removeprefix("torch.")
    assert document["settings"]["dtype_choice"] == f"--dtype auto on cpu: float32; the base is stored in {name}"
    assert document["base"]["family"] == ("tiny SD1.x" if family == "SD1.x" else "SD2.x")
    assert {a["format"] for a in document["adapters"]} == {"kohya", "diffusers", "peft"}
    for adapter in document["adapters"]:
        assert adapter["tensors_applied"] == adapter["tensors"] > 0, adapter["name"]


def test_the_scale_zero_tolerance_allows_one_rounding_step_of_a_decoded_pixel_only_in_half_precision(tmp_path):
    """float32 keeps the determinism tolerance (`--diff-floor` / 10); float16 and bfloat16 allow 255 x eps / 2,
    what the LoRA layers' presence alone moves a half-precision render by (0.07 measured on the tiny SDXL)."""
    import dataclasses

    config = offloaded_config(tmp_path, "cpu")
    tolerances = {
        dtype: dataclasses.replace(config, dtype=dtype).scale_zero_tolerance
        for dtype in ("float32", "float16", "bfloat16")
    }
    assert tolerances == {"float32": 0.05, "float16": 255 / 2**11, "bfloat16": 255 / 2**8}
    assert dataclasses.replace(config, dtype="float16", diff_floor=5.0).scale_zero_tolerance == 0.5
