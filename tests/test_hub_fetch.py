"""A base given as a hub id is fetched as diffusers fetches it, into the usual Hugging Face cache, on first use; with
`--offline` (or `HF_HUB_OFFLINE=1`) the cache alone serves it. Tested against a local server that speaks the Hub's
file protocol (`tests/hub_server.py`), never the real Hub: the harness runs in a subprocess whose `HF_ENDPOINT` names
that server and whose `HF_HOME` is the test's own."""

import json

import pytest
import torch

from tests.helpers import FAST, MECHANICAL
from tests.hub_server import LocalHub

REPO = "lora-harness/tiny-sd"


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """A tiny SD1.x-shaped pipeline as `save_pretrained` writes it, and the same with its weights as pickles only."""
    from safetensors.torch import load_file

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("hub")
    build_tiny_pipeline().save_pretrained(folder / "tiny-sd", safe_serialization=True)
    build_tiny_pipeline().save_pretrained(folder / "pickled", safe_serialization=True)
    for weights in (folder / "pickled").rglob("*.safetensors"):
        torch.save(load_file(weights), weights.with_suffix(".bin"))
        weights.unlink()
    return {REPO: folder / "tiny-sd", "lora-harness/pickled": folder / "pickled"}


def run(pytester, *args):
    result = pytester.runpytest_subprocess(*args, timeout=600)
    return result, json.loads((pytester.path / "lora-report" / "results.json").read_text())


def test_a_hub_id_is_fetched_on_first_use_with_progress_then_checked_offline_from_the_cache(
    pytester, monkeypatch, tmp_path, repos, write_lora
):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    adapter = write_lora("kohya", "sd1.safetensors")
    with LocalHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        result, online = run(pytester, "--adapter", adapter, "--base-model", REPO, *FAST, *MECHANICAL)
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
        fetched = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
        assert any(path.endswith("unet/diffusion_pytorch_model.safetensors") for path in fetched)
        assert "Fetching 10 files" in result.stderr.str()  # huggingface_hub's progress, shown, not captured

        # The server knows no such repository; the pickled one holds no weights the harness may read.
        result = pytester.runpytest_subprocess("--adapter", adapter, "--base-model", "lora-harness/none", *FAST)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert f"--base-model lora-harness/none: no such repository on {hub.endpoint}" in result.stderr.str()
        result = pytester.runpytest_subprocess("--adapter", adapter, "--base-model", "lora-harness/pickled", *FAST)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "lora-harness/pickled: its weights are pickles only" in result.stderr.str()

        # A real base is scored with the default CLIP, fetched from the repository open_clip names for its tag (not
        # served here: the CLIP checks error naming it) unless --clip-model none turns them off.
        clip_checks = ("-k", "clip_heldout or mode_collapse")
        result, default = run(pytester, "--adapter", adapter, "--base-model", REPO, *FAST, *clip_checks)
        wanted = "/timm/vit_large_patch14_clip_224.openai/resolve/main/open_clip_model.safetensors"
        assert ("HEAD", wanted) in hub.requests or ("GET", wanted) in hub.requests
        for record in default["results"]:
            assert record["status"] == "error", record
            assert (
                "--clip-model ViT-L-14:openai: no repository timm/vit_large_patch14_clip_224.openai"
                in record["message"]
            )
        result, off = run(
            pytester, "--adapter", adapter, "--base-model", REPO, "--clip-model", "none", *FAST, *clip_checks
        )
        assert {(r["status"], r["message"]) for r in off["results"]} == {
            ("skipped", "--clip-model none: no CLIP, so no CLIP verdict")
        }
        served = len(hub.requests)

    # The server is gone: the cache alone serves the id, and the verdicts are the same.
    result, offline = run(pytester, "--adapter", adapter, "--base-model", REPO, "--offline", *FAST, *MECHANICAL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    assert len(hub.requests) == served
    assert offline["settings"]["offline"] is True
    verdicts = [{(r["check"], r["status"], r["value"]) for r in document["results"]} for document in (online, offline)]
    assert verdicts[0] == verdicts[1]
    result, offline = run(
        pytester, "--adapter", adapter, "--base-model", REPO, "--offline", *FAST, "-k", "clip_heldout"
    )
    (record,) = offline["results"]
    assert (
        record["status"] == "skipped"
        and "the CLIP ViT-L-14:openai is not in the local Hugging Face cache" in record["message"]
    )
    assert "hf download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors" in record["message"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the ecosystem's own switch does the same, naming what to fetch
    result = pytester.runpytest_subprocess("--adapter", adapter, "--base-model", "lora-harness/other", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--base-model lora-harness/other: not in the local Hugging Face cache" in result.stderr.str()
    assert "hf download lora-harness/other" in result.stderr.str()


def test_a_clip_named_by_its_hub_repository_is_fetched_and_gates_and_one_of_pickles_is_refused(
    pytester, monkeypatch, tmp_path, write_lora
):
    """`--clip-model hf-hub:ORG/REPO`, an open_clip model repository (its config and safetensors weights), replaces
    the self-test CLIP and gates; a repository holding its weights as pickles only is refused unread."""
    from safetensors.torch import save_file

    from lora_harness.verdicts.clip_model import tiny_clip

    config = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {
                "layers": 2,
                "width": 32,
                "head_width": 16,
                "patch_size": 8,
                "image_size": 32,
                "pool_type": "avg",
            },
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
        }
    }
    weights = {k: v.contiguous() for k, v in tiny_clip().model.state_dict().items()}
    for name in ("tiny-clip", "pickled-clip"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "open_clip_config.json").write_text(json.dumps(config))
    save_file(weights, tmp_path / "tiny-clip" / "open_clip_model.safetensors")
    torch.save(weights, tmp_path / "pickled-clip" / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    adapter = write_lora("kohya", "sd1.safetensors")
    repos = {"lora-harness/tiny-clip": tmp_path / "tiny-clip", "lora-harness/pickled-clip": tmp_path / "pickled-clip"}
    with LocalHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        for repo, statuses in (("tiny-clip", {"passed", "failed"}), ("pickled-clip", {"error"})):
            spec = f"hf-hub:lora-harness/{repo}"
            _, document = run(pytester, "--adapter", adapter, "--clip-model", spec, *FAST, "-k", "clip_heldout")
            (record,) = document["results"]
            assert record["status"] in statuses, record
            if repo == "tiny-clip":  # the named CLIP scored it, not the self-test one: its verdict gates
                assert record["details"]["model"] == f"open_clip {spec}" and "self-test" not in record["message"]
            else:
                assert (
                    f"--clip-model {spec}: lora-harness/pickled-clip holds no open_clip_model.safetensors"
                    in record["message"]
                )
                assert not any(path.endswith(".bin") for _, path in hub.requests)
