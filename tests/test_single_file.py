"""`--base-model FILE.safetensors`: single-file checkpoints in the original key layout, as AUTOMATIC1111 and ComfyUI
hold them, detected from their header, loaded through diffusers' `from_single_file` offline, and their hashes
compared with the ones Kohya's sd-scripts records in an adapter."""

import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from tests.helpers import FAST, MECHANICAL, results
from tests.single_file_checkpoints import assert_loads_where_it_was, kohya_adapter, kohya_hashes, write_single_file

# Header-only checkpoints: the keys and shapes diffusers' detection reads, at the published models' sizes. The
# files are sparse (the header, then a hole as long as the tensors), so they cost no disk and no time.
UNET = "model.diffusion_model."
VAE = {"first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3]}
FAMILY_HEADERS = {
    "SD1.x": {
        UNET + "output_blocks.11.0.skip_connection.weight": [320, 640, 1, 1],
        UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        **VAE,
    },
    "SD2.x": {
        UNET + "output_blocks.11.0.skip_connection.weight": [320, 640, 1, 1],
        UNET + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": [320, 1024],
        "cond_stage_model.model.token_embedding.weight": [49408, 1024],
        **VAE,
    },
    "SDXL": {
        UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": [1280],
        **VAE,
    },
    # sd3_medium_incl_clips.safetensors: the MMDiT, both CLIPs and the VAE, no T5.
    "SD3": {
        UNET + "joint_blocks.0.context_block.adaLN_modulation.1.bias": [9216],
        UNET + "pos_embed": [1, 36864, 1536],
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        "text_encoders.clip_g.transformer.text_model.embeddings.token_embedding.weight": [49408, 1280],
        **VAE,
    },
    # flux1-dev.safetensors as Black Forest Labs publish it: the transformer alone, without a prefix.
    "Flux": {
        "double_blocks.0.img_attn.norm.key_norm.scale": [128],
        "guidance_in.in_layer.bias": [3072],
        "img_in.weight": [3072, 64],
    },
}
DTYPE_SIZES = {"F16": 2, "F32": 4}


def write_header_only(path: Path, shapes: dict, dtype: str = "F16") -> Path:
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = DTYPE_SIZES[dtype] * int(torch.tensor(shape).prod())
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


def collect(pytester, base: Path, *args):
    """Configure a run on `base` without running a check: the family is known then, no weights are read."""
    return pytester.runpytest_inprocess("--adapter", "reference", "--base-model", str(base), "--collect-only", *args)


@pytest.mark.parametrize("family", ["SD1.x", "SD2.x", "SDXL"])
def test_each_carried_familys_layout_is_detected_from_the_header_alone(pytester, family):
    base = write_header_only(pytester.path / f"{family}.safetensors", FAMILY_HEADERS[family])
    result = collect(pytester, base)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    recorded = results(pytester)["settings"]["base_single_file"]
    assert recorded["path"] == str(base) and recorded["family"] == family
    assert recorded["stored_dtype"] == "float16"
    assert "float16" in results(pytester)["settings"]["dtype_choice"]


@pytest.mark.parametrize(
    "family, described, repository",
    [
        (
            "SD3",
            "an SD3 file of the transformer and CLIP-G, CLIP-L, VAE",
            "stabilityai/stable-diffusion-3-medium-diffusers",
        ),
        ("Flux", "a Flux file of the transformer alone", "black-forest-labs/FLUX.1-dev"),
    ],
)
def test_mmdit_files_name_the_repository_their_pipeline_is_taken_from_and_what_to_fetch_offline(
    pytester, family, described, repository
):
    """No single file holds T5's SentencePiece tokenizer: SD3's and Flux's pipelines take their other parts from
    --base-components, by default the repository diffusers' `from_single_file` names for the file's model type;
    offline and not cached, the usage error says what the file is and what to fetch. (Loading such files is tested
    on the families whose files load at tiny widths: tests/test_denoiser_files.py.)"""
    base = write_header_only(pytester.path / f"{family}.safetensors", FAMILY_HEADERS[family])
    result = collect(pytester, base, "--offline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert f"--base-model {base} is {described}" in message
    assert f"{repository}: not in the local Hugging Face cache" in message
    assert f"`hf download {repository} --exclude 'transformer/*.safetensors'`" in message


@pytest.mark.parametrize(
    "keys, seen",
    [
        # A diffusers U-Net file (unet/diffusion_pytorch_model.safetensors) passed for the checkpoint.
        (
            {"down_blocks.0.resnets.0.conv1.weight": [320, 320, 3, 3], "conv_in.weight": [320, 4, 3, 3]},
            "`down_blocks.0.…` (1)",
        ),
        # A Kohya LoRA passed for the base.
        (
            {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": [4, 1280]},
            "`lora_unet_mid_block_attentions_0_proj_in.lora_down.…` (1)",
        ),
        # SD1.5 inpainting: 9 input channels, which diffusers names; not a text-to-image base.
        (
            {UNET + "input_blocks.0.0.weight": [320, 9, 3, 3], **FAMILY_HEADERS["SD1.x"]},
            "diffusers reads it as `inpainting`",
        ),
    ],
    ids=["diffusers-unet", "kohya-lora", "sd15-inpainting"],
)
def test_a_file_of_no_known_layout_is_a_usage_error_naming_what_it_holds(pytester, keys, seen):
    base = write_header_only(pytester.path / "model.safetensors", keys)
    result = collect(pytester, base)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = result.stderr.str()
    assert f"--base-model {base}: not a checkpoint of a family lora-harness checks" in message
    assert seen in message and "a diffusers pipeline folder" in message


def test_a_checkpoint_without_its_text_encoder_takes_its_pipeline_from_the_published_repository(pytester):
    """Its U-Net alone is used, the rest comes from --base-components (by default SDXL base's repository): offline and
    not cached, the usage error names the missing part and what to fetch."""
    keys = {k: v for k, v in FAMILY_HEADERS["SDXL"].items() if not k.startswith("conditioner.embedders.0.")}
    result = collect(pytester, write_header_only(pytester.path / "unet-only.safetensors", keys), "--offline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*is an SDXL checkpoint without its CLIP ViT-L text encoder, so the rest of its pipeline comes from the "
            "published repository for `xl_base`) stabilityai/stable-diffusion-xl-base-1.0: not in the local Hugging "
            "Face cache*`hf download stabilityai/stable-diffusion-xl-base-1.0 --exclude 'unet/*.safetensors'`*"
        ]
    )


def test_an_sdxl_u_net_alone_is_told_by_its_size_conditioning(pytester):
    """diffusers tells SDXL by a text encoder's key; a U-Net alone is told by the registry's marks (`label_emb`)."""
    keys = {k: v for k, v in FAMILY_HEADERS["SDXL"].items() if k.startswith(UNET)}
    keys |= {UNET + "label_emb.0.0.weight": [1280, 2816], UNET + "input_blocks.4.1.proj_in.weight": [640, 640]}
    result = collect(pytester, write_header_only(pytester.path / "sdxl-unet.safetensors", keys), "--offline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*is an SDXL checkpoint without its VAE, CLIP ViT-L text encoder, OpenCLIP ViT-bigG text encoder*`xl_base`*"]
    )


class WritesWhenUnpickled:
    """Unpickling this writes a file: its absence proves the checkpoint was never unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["v1-5-pruned-emaonly.ckpt", "renamed.safetensors"])
def test_a_pickled_checkpoint_is_refused_without_being_unpickled(pytester, name):
    marker = pytester.path / "unpickled"
    base = pytester.path / name
    base.write_bytes(pickle.dumps({"state_dict": WritesWhenUnpickled(marker)}, protocol=4))
    result = collect(pytester, base)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--base-model {base}: a pickle-based checkpoint*never unpickles*.safetensors*"])
    assert not marker.exists()


# --- Whole single files: an SD1.x checkpoint of SD1's real layout (four U-Net and VAE blocks, two layers each) at
# narrow widths, written under the original LDM key names (`fixtures/family_bases.py`'s `original_checkpoint`).


@pytest.fixture(scope="module")
def sd1_file(tmp_path_factory):
    """(checkpoint, its narrow configs, the models it was written from): an SD1.x single file of SD1's layout."""
    return write_single_file(tmp_path_factory.mktemp("sd1-single-file"), "SD1.x", torch.float16)


@pytest.fixture
def narrow_sd1(sd1_file, monkeypatch):
    from lora_harness.bases import single_file

    checkpoint, configs, pipeline = sd1_file
    monkeypatch.setitem(single_file.CONFIG_FOLDERS, "SD1.x", configs)
    return checkpoint, pipeline


def test_the_file_loads_through_from_single_file_with_every_weight_where_it_was(narrow_sd1):
    checkpoint, original = narrow_sd1
    loaded = assert_loads_where_it_was(checkpoint, original, "SD1.x", "v1", torch.float16)
    assert type(loaded.scheduler).__name__ == "PNDMScheduler"  # the carried scheduler config


def test_a_good_adapter_passes_the_mechanical_checks_on_a_single_file_base(pytester, narrow_sd1):
    checkpoint, pipeline = narrow_sd1
    adapter = kohya_adapter(pipeline, pytester.path / "style.safetensors", **kohya_hashes(checkpoint))
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, "--base-model", checkpoint, *FAST, *MECHANICAL, "--param-budget", "10%"
    )
    result.assert_outcomes(passed=5)
    document = results(pytester)
    (record,) = document["adapters"]
    assert record["tensors_applied"] == record["tensors"] > 0
    single = document["base"]["single_file"]
    assert single["family"] == "SD1.x" and single["path"] == str(checkpoint)
    assert single["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert document["settings"]["base_single_file"]["family"] == "SD1.x"
    assert document["settings"]["dtype_choice"] == "--dtype auto on cpu: float32; the base is stored in float16"


def test_a_u_net_alone_takes_the_rest_of_its_pipeline_from_base_components(pytester, narrow_sd1):
    """The U-Net's keys of the checkpoint, alone in a file, with a diffusers folder of the same model for the rest:
    the U-Net is the file's (every weight where it was), the Kohya adapter passes the mechanical checks on it."""
    from safetensors.torch import load_file, save_file

    from lora_harness.bases.single_file import inspect_single_file, load_denoiser, load_single_file

    checkpoint, pipeline = narrow_sd1
    load_single_file(inspect_single_file(str(checkpoint), checkpoint), torch.float16).save_pretrained(
        pytester.path / "components"
    )
    u_net = pytester.path / "unet-only.safetensors"
    save_file({k: v for k, v in load_file(checkpoint).items() if k.startswith(UNET)}, u_net)
    loaded = load_denoiser(inspect_single_file(str(u_net), u_net), pytester.path / "components", torch.float16)
    want = {k: v.to(torch.float16) for k, v in pipeline.unet.state_dict().items()}
    assert loaded.state_dict().keys() == want.keys()
    assert all(torch.equal(loaded.state_dict()[k], want[k]) for k in want)
    adapter = kohya_adapter(pipeline, pytester.path / "style.safetensors")
    result = pytester.runpytest_inprocess(
        "--adapter",
        adapter,
        "--base-model",
        u_net,
        "--base-components",
        pytester.path / "components",
        *FAST,
        *MECHANICAL,
        "--param-budget",
        "10%",
    )
    result.assert_outcomes(passed=5)
    document = results(pytester)
    single = document["base"]["single_file"]
    assert (single["family"], single["used"]) == ("SD1.x", "the unet")
    assert single["components"] == str(pytester.path / "components")
    (record,) = document["adapters"]
    assert record["tensors_applied"] == record["tensors"] > 0


def test_a_single_file_on_the_hub_is_fetched_by_its_url_then_read_offline(pytester, narrow_sd1, local_hub_in_process):
    """The URL diffusers' `from_single_file` takes (https://huggingface.co/ORG/REPO/blob/main/FILE) is fetched into
    the Hugging Face cache; offline, the cache alone serves it; a pickle's URL is refused before any download."""
    checkpoint, pipeline = narrow_sd1
    repo = pytester.path / "repo"
    (repo / "unet").mkdir(parents=True)
    (repo / "unet" / "sd1.safetensors").write_bytes(checkpoint.read_bytes())
    adapter = kohya_adapter(pipeline, pytester.path / "style.safetensors")
    url = "https://huggingface.co/org/sd1-single/blob/main/unet/sd1.safetensors"
    with local_hub_in_process({"org/sd1-single": repo}) as hub:
        result = pytester.runpytest_inprocess("--adapter", adapter, "--base-model", url, *FAST, *MECHANICAL)
        result.assert_outcomes(passed=5)
        assert ("GET", "/org/sd1-single/resolve/main/unet/sd1.safetensors") in hub.requests
        refused = pytester.runpytest_inprocess(
            "--adapter", adapter, "--base-model", url.replace(".safetensors", ".ckpt")
        )
        assert refused.ret == pytest.ExitCode.USAGE_ERROR
        refused.stderr.fnmatch_lines(["*sd1.ckpt is not a .safetensors file; lora-harness never unpickles*"])
        served = len(hub.requests)
    single = results(pytester)["base"]["single_file"]
    assert single["family"] == "SD1.x" and single["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert "hf-cache" in single["path"]

    result = pytester.runpytest_inprocess("--adapter", adapter, "--base-model", url, "--offline", *FAST, *MECHANICAL)
    result.assert_outcomes(passed=5)
    assert len(hub.requests) == served
    other = "https://huggingface.co/org/other/blob/main/sd1.safetensors"
    result = pytester.runpytest_inprocess("--adapter", adapter, "--base-model", other, "--offline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*not in the local Hugging Face cache, and the run is offline*`hf download org/other sd1.safetensors`*"]
    )


def release_metadata_run(pytester, checkpoint, adapter):
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, "--base-model", checkpoint, *FAST, "-k", "release_metadata"
    )
    (record,) = [r for r in results(pytester)["results"] if r["check"] == "release_metadata"]
    return result, record


@pytest.mark.parametrize("recorded", ["full", "a1111-short"])
def test_release_metadata_reports_a_base_hash_that_matches_the_single_file(pytester, narrow_sd1, recorded):
    checkpoint, pipeline = narrow_sd1
    hashes = kohya_hashes(checkpoint)
    if recorded == "a1111-short":  # AUTOMATIC1111 shows the SHA-256's first 10 digits
        hashes["ss_new_sd_model_hash"] = hashes["ss_new_sd_model_hash"][:10]
    adapter = kohya_adapter(pipeline, pytester.path / "style.safetensors", **hashes)
    result, record = release_metadata_run(pytester, checkpoint, adapter)
    result.assert_outcomes(passed=1)
    assert record["details"]["base_hash_matched"] is True
    compared = record["details"]["base_hashes"]
    assert (
        compared["ss_sd_model_hash"]["recorded"] == compared["ss_sd_model_hash"]["base"] == hashes["ss_sd_model_hash"]
    )
    assert compared["ss_new_sd_model_hash"]["matches"]
    card = (pytester.path / "lora-report" / "release_cards" / "style.safetensors" / "release_card.md").read_text()
    assert f"base checkpoint SHA-256 `{hashlib.sha256(checkpoint.read_bytes()).hexdigest()}`" in card
    assert card.count("(matches the base under test)") == 2


@pytest.mark.parametrize("key", ["ss_new_sd_model_hash", "ss_sd_model_hash"])
def test_release_metadata_fails_on_a_base_hash_of_another_checkpoint_with_both_values(pytester, narrow_sd1, key):
    checkpoint, pipeline = narrow_sd1
    other = pytester.path / "other.safetensors"
    other.write_bytes(checkpoint.read_bytes()[:-2] + b"\x01\x02")  # same size, different last tensor bytes
    hashes = kohya_hashes(checkpoint)
    wrong = kohya_hashes(other)[key] if key == "ss_new_sd_model_hash" else "0badc0de"
    adapter = kohya_adapter(pipeline, pytester.path / "style.safetensors", **{**hashes, key: wrong})
    result, record = release_metadata_run(pytester, checkpoint, adapter)
    result.assert_outcomes(failed=1)
    base = record["details"]["base_hashes"][key]["base"]
    assert base == (hashes[key] if key == "ss_sd_model_hash" else hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    assert f"the metadata records {key} {wrong!r}" in record["message"] and repr(base) in record["message"]
    assert str(checkpoint) in record["message"] and record["details"]["base_hash_matched"] is False


def test_the_carried_configs_build_the_published_architectures():
    """Parameter counts of the models the carried configs describe (built on the meta device: no memory), against the
    published ones: SD1.5's U-Net 859,520,964, SD2.1's 865,910,724, SDXL's 2,567,463,684, SD's VAE 83,653,863,
    CLIP ViT-L's text encoder 123,060,480, SD2's OpenCLIP-H (23 layers) 340,387,840, SDXL's OpenCLIP-bigG 694,659,840."""
    from lora_harness.bases.memory import family_weights

    vae, clip_l = 83_653_863, 123_060_480
    published = {
        "SD1.x": {"unet": 859_520_964, "vae": vae, "text_encoder": clip_l},
        "SD2.x": {"unet": 865_910_724, "vae": vae, "text_encoder": 340_387_840},
        "SDXL": {"unet": 2_567_463_684, "vae": vae, "text_encoder": clip_l, "text_encoder_2": 694_659_840},
    }
    assert {family: family_weights(family).parameters for family in published} == published
