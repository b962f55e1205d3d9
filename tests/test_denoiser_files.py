"""`--base-model FILE` for a file of a denoiser alone, as ComfyUI's `diffusion_models/` files hold the published
FLUX.2, Qwen-Image, Z-Image and Wan 2.1 transformers, the rest of the pipeline from `--base-components` (a diffusers
folder, or a hub id fetched without its denoiser's weights). Each file is written in the layout musubi-tuner's model
code loads (`tests/denoiser_files.py`) with a tiny twin's weights moved off the components folder's: every weight
lands where it was, musubi-tuner's own LoRA file for the family lands whole on it, and components that cannot serve
the file are usage errors naming both."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_harness.bases import tiny_base
from lora_harness.bases.components import resolve_components
from lora_harness.bases.single_file import inspect_single_file, load_denoiser
from tests.denoiser_files import TRAINER_FILES, write_denoiser_file
from tests.helpers import FAST, MECHANICAL, results

# The twins render at their own size, which a saved folder does not keep (each pipeline class's default is its
# model's, 1024 or 480, beyond a tiny Z-Image's rotary positions).
AT_TWIN_SIZE = ("--render-size", str(tiny_base.NATIVE_SIZE))
COMFYUI = "model.diffusion_model."  # what ComfyUI's checkpoint savers put before a denoiser's keys
# family -> (its twin, the file's dtype, its key prefix, musubi-tuner's LoRA file for it)
FAMILIES = {
    # BFL's own file holds no prefix; diffusers' FLUX.2 conversion does not strip ComfyUI's
    "Flux.2": ("build_tiny_flux2_pipeline", torch.bfloat16, "", "musubi-flux2.safetensors"),
    "Qwen-Image": ("build_tiny_qwen_image_pipeline", torch.bfloat16, "", "musubi-qwen-image.safetensors"),
    "Z-Image": ("build_tiny_z_image_pipeline", torch.bfloat16, COMFYUI, "musubi-z-image.safetensors"),
    "Wan": ("build_tiny_wan_pipeline", torch.float16, "", "musubi-wan.safetensors"),
}


def denoiser_file(folder: Path, family: str, builder: str, dtype, prefix: str = "") -> tuple[Path, Path, dict]:
    """(the file, the components folder, the file's weights as the model holds them): the twin saved as the
    components, its transformer moved off those weights (seeded) and written as `family`'s published file."""
    pipeline = getattr(tiny_base, builder)()
    pipeline.save_pretrained(folder / "components")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in pipeline.transformer.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    path = write_denoiser_file(pipeline.transformer, family, folder / f"{family}.safetensors", dtype, prefix)
    return path, folder / "components", {k: v.to(dtype) for k, v in pipeline.transformer.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return {
        family: denoiser_file(tmp_path_factory.mktemp(family), family, builder, dtype, prefix)
        for family, (builder, dtype, prefix, _) in FAMILIES.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_file_is_detected_and_its_transformer_loads_with_every_weight_where_it_was(files, family):
    path, components, expected = files[family]
    detected = inspect_single_file(str(path), path)
    assert (detected.family, detected.whole, detected.component) == (family, False, "transformer")
    assert detected.dtype == str(FAMILIES[family][1]).removeprefix("torch.")
    assert resolve_components(str(path), path, str(components), offline=True) == components
    loaded = load_denoiser(detected, components, torch.float32).state_dict()
    assert set(loaded) == set(expected)
    moved = [key for key in expected if not torch.equal(loaded[key], expected[key].float())]
    assert not moved, f"{len(moved)} of {len(expected)} weights are not where they were, first {moved[0]}"
    folder_weights = load_file(components / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(loaded[key], folder_weights[key]) for key in folder_weights)  # read from the file


@pytest.mark.parametrize("family", FAMILIES)
def test_musubi_tuners_lora_lands_whole_on_each_familys_file_and_passes_the_mechanical_checks(pytester, files, family):
    path, components, _ = files[family]
    adapter = TRAINER_FILES / FAMILIES[family][3]
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, "--base-model", path, "--base-components", components, *AT_TWIN_SIZE, *FAST, *MECHANICAL
    )
    result.assert_outcomes(passed=5)
    written = results(pytester)
    single = written["base"]["single_file"]
    assert (single["family"], single["used"], single["components"]) == (family, "the transformer", str(components))
    report = (pytester.path / "lora-report" / "report.html").read_text()
    assert f"the transformer from the file, the rest from <code>{components}</code>" in report
    (record,) = [r for r in written["results"] if r["check"] == "wiring"]
    assert record["details"]["tensors_applied"] == record["details"]["tensors"] > 0


def collect(pytester, base: Path, *args):
    """Configure a run without running a check: the components are resolved then, no weights are read."""
    return pytester.runpytest_inprocess("--adapter", "reference", "--base-model", base, "--collect-only", *args)


def test_components_of_another_family_are_a_usage_error_naming_both(pytester, files):
    wan, _, _ = files["Wan"]
    _, qwen_components, _ = files["Qwen-Image"]
    result = collect(pytester, wan, "--base-components", qwen_components)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--base-components {qwen_components}: a QwenImagePipeline (Qwen-Image), but --base-model {wan} is a Wan "
            "file of the transformer alone*pass a Wan pipeline's folder or hub id*"
        ]
    )


def test_a_file_that_does_not_fit_the_components_config_is_a_usage_error_naming_the_first_misfit(pytester, files):
    """A FLUX.2 Klein file (no guidance embedder) with FLUX.2 dev's components (guidance distilled): one family, two
    models; said from the header's shapes before any weight is read."""
    klein, _, _ = files["Flux.2"]
    dev = tiny_base.build_tiny_flux2_dev_pipeline()
    dev.save_pretrained(pytester.path / "dev")
    result = collect(pytester, klein, "--base-components", pytester.path / "dev")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--base-model {klein}: its transformer does not fit the transformer config of --base-components "
            f"{pytester.path / 'dev'}: * of the model's * tensors are not in it (first `*guidance*`)*"
        ]
    )


def test_components_with_a_second_expert_are_refused_for_a_file_of_one(pytester, files):
    wan, _, _ = files["Wan"]
    tiny_base.build_tiny_wan22_pipeline().save_pretrained(pytester.path / "wan22")
    result = collect(pytester, wan, "--base-components", pytester.path / "wan22")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*a WanPipeline with a second expert (`transformer_2`)*holds one transformer*"])


@pytest.mark.parametrize("base", ["tiny", "whole-sd1"])
def test_base_components_for_a_base_that_needs_none_is_a_usage_error(pytester, base):
    if base == "whole-sd1":
        from tests.test_single_file import FAMILY_HEADERS, write_header_only

        base = write_header_only(pytester.path / "sd1.safetensors", FAMILY_HEADERS["SD1.x"])
    result = collect(pytester, base, "--base-components", "org/repo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--base-components org/repo: *drop --base-components*"])


def test_without_base_components_the_repository_diffusers_names_is_fetched_without_its_transformer(
    pytester, monkeypatch, tmp_path
):
    """A FLUX.2 dev file (diffusers reads it as `flux-2-dev`) takes its other parts from black-forest-labs/FLUX.2-dev,
    served here by a local Hub (the run in a subprocess whose `HF_ENDPOINT` names it): everything but the
    transformer's weights is fetched, then read offline from the cache; not cached and offline, the usage error
    names the repository and how to fetch it."""
    from tests.hub_server import LocalHub

    path, components, _ = denoiser_file(pytester.path, "Flux.2 dev", "build_tiny_flux2_dev_pipeline", torch.bfloat16)
    adapter = TRAINER_FILES / FAMILIES["Flux.2"][3]
    run = ("--adapter", adapter, "--base-model", path, *AT_TWIN_SIZE, *FAST, *MECHANICAL)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with LocalHub({"black-forest-labs/FLUX.2-dev": components}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        pytester.runpytest_subprocess(*run, timeout=600).assert_outcomes(passed=5)
        fetched = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
        served = len(hub.requests)
        pytester.runpytest_subprocess(*run, "--offline", timeout=600).assert_outcomes(passed=5)
        assert hub.requests[served:] == []  # nothing asked of the Hub offline
    assert any(name.endswith("/transformer/config.json") for name in fetched)
    assert not any("/transformer/" in name and name.endswith(".safetensors") for name in fetched), sorted(fetched)
    assert any(name.endswith("/vae/diffusion_pytorch_model.safetensors") for name in fetched)
    single = results(pytester)["base"]["single_file"]
    assert (single["model_type"], single["components"]) == ("flux-2-dev", "black-forest-labs/FLUX.2-dev")
    assert "hf-home" in single["components_path"]

    qwen, _, _ = denoiser_file(pytester.path / "qwen", "Qwen-Image", "build_tiny_qwen_image_pipeline", torch.bfloat16)
    result = pytester.runpytest_subprocess("--adapter", "reference", "--base-model", qwen, "--offline", timeout=600)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--base-components (not given: --base-model {qwen} is a Qwen-Image file of the transformer alone, so "
            "the rest of its pipeline comes from the published repository for `qwen-image`) Qwen/Qwen-Image: not in "
            "the local Hugging Face cache*`hf download Qwen/Qwen-Image --exclude 'transformer/*.safetensors'`*"
        ]
    )


@pytest.mark.parametrize("family", ["Qwen-Image", "Flux.2"])
def test_a_prefixed_file_whose_conversion_keeps_the_prefix_is_a_usage_error_saying_so(pytester, family):
    """diffusers' Qwen-Image mapping is the identity and its FLUX.2 one does not strip ComfyUI's prefix (Z-Image's
    and Wan's do: tested above), so such a file would load nothing; said before any weight is read."""
    builder, dtype, _, _ = FAMILIES[family]
    path, components, _ = denoiser_file(pytester.path, family, builder, dtype, COMFYUI)
    result = collect(pytester, path, "--base-components", components)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*its transformer does not fit*its keys carry ComfyUI's `{COMFYUI}` prefix, which diffusers' * conversion "
            "does not strip: save the file again without it*"
        ]
    )


def test_a_hub_id_given_as_components_fetches_no_denoiser_weights_even_where_the_pipeline_holds_them_optional(
    pytester, monkeypatch, tmp_path, files
):
    """WanPipeline's transformers are optional arguments, which diffusers' own download does not leave out when
    passed: the components are fetched by their folders, never the transformer's weights."""
    from tests.hub_server import LocalHub

    path, components, _ = files["Wan"]
    adapter = TRAINER_FILES / FAMILIES["Wan"][3]
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with LocalHub({"org/wan-t2v": components}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        run = ("--adapter", adapter, "--base-model", path, "--base-components", "org/wan-t2v", *AT_TWIN_SIZE, *FAST)
        pytester.runpytest_subprocess(*run, *MECHANICAL, timeout=600).assert_outcomes(passed=5)
    fetched = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
    assert any(name.endswith("/transformer/config.json") for name in fetched)
    assert not any("/transformer/" in name and name.endswith(".safetensors") for name in fetched), sorted(fetched)
    assert {name.split("/")[-2] for name in fetched if name.endswith(".safetensors")} == {"text_encoder", "vae"}


def test_a_wan_file_of_a_width_diffusers_reads_as_image_to_video_needs_its_components_named(pytester, files):
    """diffusers reads any Wan file of neither 1.3B's nor 14B's width as `wan-i2v-14B`, whose repository is an
    image-to-video pipeline: no default is taken for it."""
    path, _, _ = files["Wan"]
    result = collect(pytester, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*--base-model {path}: a Wan file of the transformer alone, which diffusers reads as `wan-i2v-14B`*pass "
            "--base-components*"
        ]
    )


def test_an_image_to_video_file_is_named_and_refused(pytester):
    from tests.test_single_file import write_header_only

    header = {
        "head.modulation": [1, 2, 5120],
        "patch_embedding.weight": [5120, 36, 1, 2, 2],
        "img_emb.proj.1.weight": [5120, 1280],
    }
    path = write_header_only(pytester.path / "wan2.1_i2v_480p_14B_bf16.safetensors", header)
    result = collect(pytester, path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*--base-model {path}: a Wan file of an image-to-video model (`img_emb.…`*renders from prompts alone*"]
    )


def test_components_that_cannot_configure_the_denoiser_are_usage_errors(pytester, files):
    """A folder saved without its transformer (`hf download … --exclude 'transformer/*'`), and a file given for the
    folder."""
    import shutil

    path, components, _ = files["Wan"]
    partial = pytester.path / "no-transformer"
    shutil.copytree(components, partial, ignore=shutil.ignore_patterns("transformer"))
    result = collect(pytester, path, "--base-components", partial)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--base-components {partial}: no transformer/config.json*"])
    result = collect(pytester, path, "--base-components", path)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--base-components {path}: a file, not a diffusers folder*"])
