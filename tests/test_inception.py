"""--inception-weights: fid and kid on torch-fidelity's Inception v3 (as torchmetrics runs it), tested with a seeded
network of the real names and shapes. Published weights are fetched on first use into torch's hub cache (here from a
local HTTP server, never the internet), checked against the hash their name publishes and read without unpickling;
offline, the cache alone serves them. Bad weight files are refused before any model loads."""

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from lora_harness.config.config import ConfigError
from lora_harness.fixtures.inception_weights import write_random_inception
from lora_harness.rendering.progress import Progress
from lora_harness.verdicts.inception import (
    TORCH_FIDELITY,
    InceptionFeatures,
    inception_spec,
    load_inception,
)
from lora_harness.verdicts.quality import frechet_distance
from tests import helpers
from tests.helpers import FAST_ALL_SEEDS, write_tinted_corpora


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return write_random_inception(tmp_path_factory.mktemp("inception") / "inception.safetensors")


def test_inception_fid_agrees_with_torchmetrics(inception_file):
    """Our FID on the extractor's features equals torchmetrics' FrechetInceptionDistance driving the same network."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    features = InceptionFeatures(inception_file)
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (6, 64, 64, 3), dtype=np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-60, 60, real.shape), 0, 255).astype(np.uint8)
    metric = FrechetInceptionDistance(feature=features.model)
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    ours = frechet_distance(features.image_features(fake), features.image_features(real))
    assert ours == pytest.approx(float(metric.compute()), rel=1e-4)


def test_fid_and_kid_run_on_inception_features_and_cmmd_on_clip(pytester, write_lora, inception_file):
    """Which features each distance used is in its record. (Which way a seeded network's distances move says
    nothing; the gating direction is tested with injected features in test_quality.py.)"""
    write_tinted_corpora(pytester.path, count=12)
    run = (
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        *FAST_ALL_SEEDS,
        "--render-seeds",
        "6",
        "-k",
        "fid or kid or cmmd",
    )
    pytester.runpytest_inprocess(
        *run, "--inception-weights", inception_file, "--reference-images", pytester.path / "red"
    )
    records = helpers.records(pytester)
    for check in ("fid", "kid"):
        record = records[("good.safetensors", check)]
        assert record["details"]["model"].startswith(
            "Inception v3 pool features (torch-fidelity), weights inception.safetensors"
        )
        assert record["details"]["generated"] == 12 and record["details"]["reference"] == 12
        assert isinstance(record["value"], float) and record["status"] in ("passed", "failed", "skipped")
    assert "below 50 images per side" in records[("good.safetensors", "fid")]["message"]
    assert records[("good.safetensors", "cmmd")]["details"]["model"].startswith("self-test model")  # CLIP by definition


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("inception.bin", b"\x80\x04", "*inception.bin: not a weights file; pass torch-fidelity*"),
        ("inception.pth", b"\x80\x04", "*inception.pth: not a torch.save file*"),
        ("absent.safetensors", None, "*absent.safetensors: no such file*"),
        ("garbage.safetensors", b"not a safetensors file", "*garbage.safetensors: not a readable safetensors file*"),
        ("https://example.org/inception.html", None, "*a URL of a .pth or .safetensors file is fetched*"),
    ],
)
def test_unusable_weight_files_are_usage_errors(pytester, name, content, message):
    if content is not None:
        (pytester.path / name).write_bytes(content)
    result = pytester.runpytest_inprocess(
        "--adapter", "x.safetensors", "--inception-weights", name, "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_weights_of_another_network_are_an_error_for_fid_and_kid(pytester, write_lora):
    """A readable safetensors file that is not Inception (here: a LoRA): fid and kid say so; cmmd is unaffected."""
    other = write_lora("diffusers", "lora.safetensors")
    write_tinted_corpora(pytester.path, count=4)
    run = ("--adapter", write_lora("kohya", "good.safetensors"), *FAST_ALL_SEEDS, "-k", "fid or kid or cmmd")
    result = pytester.runpytest_inprocess(
        *run, "--inception-weights", other, "--reference-images", pytester.path / "red"
    )
    records = helpers.records(pytester)
    for check in ("fid", "kid"):
        assert records[("good.safetensors", check)]["status"] == "error"
        assert "not torch-fidelity's Inception v3 weights" in records[("good.safetensors", check)]["message"]
    cmmd = records[("good.safetensors", "cmmd")]  # measured on the self-test CLIP: reported, not gated
    assert cmmd["status"] == "skipped" and cmmd["details"]["measured_status"] in ("passed", "failed")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


class _Server:
    """A local HTTP server for one folder's files, counting what is fetched: the published weights' URL stand-in."""

    def __init__(self, folder):
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                requests.append(self.path)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A seeded Inception in torch's legacy .pth stream, named as torch-fidelity names its file: with the first
    eight hex digits of its sha256 (torch.hub checks downloads against them)."""
    folder = tmp_path_factory.mktemp("published")
    written = write_random_inception(folder / "seeded.pth")
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    named = written.rename(folder / f"weights-inception-seeded-{digest[:8]}.pth")
    (folder / "weights-inception-seeded-00000000.pth").write_bytes(named.read_bytes())  # a name whose hash lies
    return folder, named.name, digest


def test_published_weights_are_fetched_once_with_progress_then_read_offline_from_torch_cache(
    pytester, monkeypatch, tmp_path, published, write_lora
):
    folder, name, digest = published
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    write_tinted_corpora(pytester.path, count=6)
    run = (
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        *FAST_ALL_SEEDS,
        "--render-seeds",
        "6",
        "--reference-images",
        pytester.path / "red",
    )
    with _Server(folder) as server:
        url = f"{server.url}/{name}"
        result = pytester.runpytest_inprocess(*run, "--inception-weights", url, "-k", "fid or kid")
        assert server.requests == [f"/{name}"]
    result.stdout.fnmatch_lines([f"*fetching the Inception v3 weights {name} into *torch-home/hub/checkpoints*"])
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / name).is_file()
    online = helpers.records(pytester)
    label = f"Inception v3 pool features (torch-fidelity), weights {name} sha256 {digest[:12]}"
    assert {online[("good.safetensors", check)]["details"]["model"] for check in ("fid", "kid")} == {label}

    # The server is gone: the cached file serves, with the same distances.
    pytester.runpytest_inprocess(*run, "--inception-weights", url, "--offline", "-k", "fid or kid")
    offline = helpers.records(pytester)
    for check in ("fid", "kid"):
        assert offline[("good.safetensors", check)]["details"]["model"] == label
        assert offline[("good.safetensors", check)]["value"] == pytest.approx(
            online[("good.safetensors", check)]["value"]
        )


def test_a_download_whose_hash_is_not_the_published_one_is_refused_and_not_kept(monkeypatch, tmp_path, published):
    folder, _, digest = published
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with _Server(folder) as server, pytest.raises(ConfigError, match="the download is not the published file"):
        load_inception(f"{server.url}/weights-inception-seeded-00000000.pth", offline=False, progress=Progress())
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())
    # The same file already in the cache (put there by hand) is checked as well, each time it is read.
    (tmp_path / "hub" / "checkpoints" / "weights-inception-seeded-00000000.pth").write_bytes(
        (folder / "weights-inception-seeded-00000000.pth").read_bytes()
    )
    with pytest.raises(ConfigError, match=f"its sha256 {digest[:12]}… is not the 00000000 its name publishes"):
        load_inception("http://unused/weights-inception-seeded-00000000.pth", offline=True, progress=Progress())


def test_a_pth_that_would_run_code_is_refused_and_never_run(tmp_path):
    import os

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    path = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(2), "payload": Payload()}, path)
    with pytest.raises(ConfigError, match=r"inception.pth: not a file of Inception v3 weights \(its pickle asks for"):
        load_inception(str(path), offline=False, progress=Progress())
    assert not (tmp_path / "ran").exists()


def test_a_real_base_uses_torch_fidelity_weights_by_default_and_offline_says_how_to_fetch_them(
    pytester, monkeypatch, tmp_path, write_lora
):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from lora_harness.bases.tiny_base import build_tiny_pipeline

    assert inception_spec(None, real_base=True) == TORCH_FIDELITY and inception_spec(None, real_base=False) is None
    assert inception_spec("none", real_base=True) is None
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    build_tiny_pipeline().save_pretrained(pytester.path / "base", safe_serialization=True)
    write_tinted_corpora(pytester.path, count=2)
    adapter = write_lora("kohya", "good.safetensors")
    run = ("--adapter", adapter, "--base-model", "base", *FAST_ALL_SEEDS, "--reference-images", pytester.path / "red")
    pytester.runpytest_inprocess(*run, "--offline", "-k", "fid or kid")
    records = helpers.records(pytester)
    for check in ("fid", "kid"):
        record = records[("good.safetensors", check)]
        assert record["status"] == "skipped", record
        assert (
            "the Inception weights weights-inception-2015-12-05-6726825d.pth are not in torch's cache"
            in (record["message"])
        )
        assert f"curl -L --create-dirs -o {tmp_path}/empty-torch-home/hub/checkpoints/" in record["message"]
        assert URL_INCEPTION_V3 in record["message"]
