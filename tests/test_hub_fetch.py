"""A base given as a hub id is fetched as diffusers fetches it, into the usual Hugging Face cache, on first use; with
`--offline` (or `HF_HUB_OFFLINE=1`) the cache alone serves it. Tested against a local server that speaks the Hub's
file protocol (`tests/hub_server.py`), never the real Hub: the harness runs in a subprocess whose `HF_ENDPOINT` names
that server and whose `HF_HOME` is the test's own."""

import json

import pytest
import torch

from tests.hub_server import LocalHub
from tests.test_families import FAST, MECHANICAL

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
        served = len(hub.requests)

    # The server is gone: the cache alone serves the id, and the verdicts are the same.
    result, offline = run(pytester, "--adapter", adapter, "--base-model", REPO, "--offline", *FAST, *MECHANICAL)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    assert len(hub.requests) == served
    assert offline["settings"]["offline"] is True
    verdicts = [{(r["check"], r["status"], r["value"]) for r in document["results"]} for document in (online, offline)]
    assert verdicts[0] == verdicts[1]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the ecosystem's own switch does the same, naming what to fetch
    result = pytester.runpytest_subprocess("--adapter", adapter, "--base-model", "lora-harness/other", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--base-model lora-harness/other: not in the local Hugging Face cache" in result.stderr.str()
    assert "hf download lora-harness/other" in result.stderr.str()
