"""--inception-weights: fid and kid on torch-fidelity's Inception v3 (as torchmetrics runs it), tested with a seeded
network of the real names and shapes; bad weight files are refused before any model loads."""

import numpy as np
import pytest
import torch

from lora_harness.fixtures.inception_weights import write_random_inception
from lora_harness.verdicts.inception import InceptionFeatures
from lora_harness.verdicts.quality import frechet_distance
from tests.test_quality import FAST, _results, write_tinted_corpora


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
        *FAST,
        "--render-seeds",
        "6",
        "-k",
        "fid or kid or cmmd",
    )
    pytester.runpytest_inprocess(
        *run, "--inception-weights", inception_file, "--reference-images", pytester.path / "red"
    )
    records = _results(pytester)
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
        (
            "inception.pth",
            b"\x80\x04",
            "*only .safetensors is read (no pickle is ever unpickled)*convert torch-fidelity's weights once*",
        ),
        ("absent.safetensors", None, "*absent.safetensors: no such file*"),
        ("garbage.safetensors", b"not a safetensors file", "*garbage.safetensors: not a readable safetensors file*"),
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
    run = ("--adapter", write_lora("kohya", "good.safetensors"), *FAST, "-k", "fid or kid or cmmd")
    result = pytester.runpytest_inprocess(
        *run, "--inception-weights", other, "--reference-images", pytester.path / "red"
    )
    records = _results(pytester)
    for check in ("fid", "kid"):
        assert records[("good.safetensors", check)]["status"] == "error"
        assert "not torch-fidelity's Inception v3 weights" in records[("good.safetensors", check)]["message"]
    cmmd = records[("good.safetensors", "cmmd")]  # measured on the self-test CLIP: reported, not gated
    assert cmmd["status"] == "skipped" and cmmd["details"]["measured_status"] in ("passed", "failed")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
