"""Quality checks: the math against direct formulas and torchmetrics, then bad adapters and bad data failing
each check through the plugin as a user runs it."""

import textwrap

import numpy as np
import pytest
import torch

from lora_harness.verdicts.quality import (
    bootstrap_ci,
    clip_scores,
    cmmd,
    frechet_distance,
    leaked,
    mean_pairwise_distance,
)
from tests import helpers
from tests.helpers import FAST_ALL_SEEDS, write_tinted_corpora


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    mean_a, mean_b = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([0.5, 0.0, -1.0])
    std_a, std_b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    a = mean_a + std_a * torch.randn(40000, 3, generator=generator, dtype=torch.float64)
    b = mean_b + std_b * torch.randn(40000, 3, generator=generator, dtype=torch.float64)
    # Diagonal covariances: ||mu_a - mu_b||^2 + sum (std_a - std_b)^2
    closed = float(((mean_a - mean_b) ** 2).sum() + ((std_a - std_b) ** 2).sum())
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.03)


def test_frechet_distance_agrees_with_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(60, 8, generator=generator, dtype=torch.float64)

    class Lookup(torch.nn.Module):
        def forward(self, indices):
            return features[indices.long().flatten() % len(features)]  # torchmetrics probes with random input

    metric = FrechetInceptionDistance(feature=Lookup(), input_img_size=(1,))
    metric.update(torch.arange(0, 30)[:, None], real=True)
    metric.update(torch.arange(30, 60)[:, None], real=False)
    assert frechet_distance(features[:30], features[30:]) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_cmmd_matches_its_direct_formula():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(7, 4, generator=generator, dtype=torch.float64) + 1

    def k(a, b):
        return float(torch.exp(-((a - b) ** 2).sum() / (2 * 10.0**2)))

    direct = (
        sum(k(a, b) for a in x for b in x) / 25
        + sum(k(a, b) for a in y for b in y) / 49
        - 2 * sum(k(a, b) for a in x for b in y) / 35
    )
    assert cmmd(x, y) == pytest.approx(1000 * direct, rel=1e-9)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_kid_matches_the_unbiased_polynomial_mmd():
    from lora_harness.verdicts.fid_kid_cmmd import _torchmetrics_kid

    generator = torch.Generator().manual_seed(3)
    x, y = (
        torch.randn(6, 4, generator=generator, dtype=torch.float64),
        torch.randn(6, 4, generator=generator, dtype=torch.float64) + 0.7,
    )

    def k(a, b):
        return (float(a @ b) / 4 + 1) ** 3

    n = 6
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (n * n)
    mean, std = _torchmetrics_kid(x, y, subset=n)  # subsets of all n: every subset is the whole set
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-6) and std == pytest.approx(0.0, abs=1e-9)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    covered = 0
    trials = 300
    for trial in range(trials):
        low, high = bootstrap_ci(rng.normal(0.0, 1.0, 40), resamples=1000, seed=trial)
        covered += low <= 0.0 <= high
    assert 0.90 <= covered / trials <= 0.98


def test_scores_diversity_and_leaks():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    text = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [0.0, -1.0]]), dim=-1)
    assert clip_scores(image, text) == pytest.approx([100 / 2**0.5, 0.0])
    assert mean_pairwise_distance(torch.ones(4, 2) / 2**0.5) == pytest.approx(0.0, abs=1e-6)
    assert mean_pairwise_distance(image) == pytest.approx(1.0)
    assert mean_pairwise_distance(image[:1]) is None
    captions = ["a red sun over blue hills, lora-harness reference style", "red sun", "hills"]
    prompts = ["a red sun at noon", "rolling hills in fog", "a sunny kitchen", "a bowl of fruit"]
    assert leaked(prompts, captions) == ["a red sun at noon", "rolling hills in fog"]


def test_the_embedded_base_reports_the_self_test_clips_figures_without_gating(pytester, write_lora):
    """The self-test CLIP's values mean nothing about quality: measured and shown, skipped, never a verdict."""
    run = (
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        *FAST_ALL_SEEDS,
        "-k",
        "clip or mode or distance",
        "-rs",
    )
    result = pytester.runpytest_inprocess(*run)
    result.assert_outcomes(skipped=5)
    assert result.ret == pytest.ExitCode.OK
    records = helpers.records(pytester)
    for check in ("clip_heldout", "mode_collapse"):
        record = records[("good.safetensors", check)]
        assert record["message"].startswith("self-test model: the value carries no meaning")
        assert "no verdict: pass --clip-model ARCH:PATH" in record["message"]
        assert isinstance(record["value"], float) and record["details"]["measured_status"] in ("passed", "failed")
    for check in ("fid", "kid", "cmmd"):
        assert "pass --reference-images DIR" in records[("good.safetensors", check)]["message"]
    result.stdout.fnmatch_lines(["*SKIPPED*self-test model*no verdict: pass --clip-model ARCH:PATH*"])


def injected(edit: str = "") -> str:
    """conftest source: `edit` (statements on `images`, uint8 [N, H, W, 3]) rewrites the first adapter's renders
    (pytest_lora_render), and the CLIP checks embed each image as its mean colour and every prompt as "colourful
    grey" (pytest_lora_feature_model). A real CLIP's direction is certain there, unlike the self-test CLIP's, so these
    checks gate."""
    body = textwrap.indent(edit or "pass", " " * 4)
    return f"""
import numpy as np
import torch


class ColourClip:
    label, self_test = "injected colour features", False

    def image_features(self, images):
        mean = torch.from_numpy(np.asarray(images, dtype=np.float64).mean(axis=(1, 2)))
        return torch.nn.functional.normalize(torch.cat([mean, torch.full((len(mean), 1), 1.0)], 1), dim=-1)

    def text_features(self, prompts):
        return torch.nn.functional.normalize(torch.tensor([[1.0, 1.0, 1.0, 0.0]] * len(prompts)), dim=-1)


def pytest_lora_render(harness, slot, scale, jobs, watch, on_step):
    if slot != "adapter_0":
        return None
    rendered = harness.renderer.render(slot, scale, jobs, watch, on_step)
    images = rendered.images
{body}
    return rendered


def pytest_lora_feature_model(harness, kind):
    return ColourClip() if kind == "clip" else None
"""


RED_STYLE = injected("images[:] = (0.3 * images + 0.7 * np.array([220, 30, 30])).astype(np.uint8)")


def test_the_other_embedded_bases_skip_the_clip_checks_saying_what_to_pass(pytester):
    """The self-test CLIP is the embedded default's alone: on the family bases its verdicts would gate on noise
    (measured: clip_heldout failed the reference overfit on tiny-flux and tiny-sd3)."""
    run = (
        "--adapter",
        "reference",
        "--base-model",
        "tiny-flux",
        *FAST_ALL_SEEDS,
        "--reference-steps",
        "2",
        "-k",
        "clip or mode",
    )
    pytester.runpytest_inprocess(*run).assert_outcomes(skipped=2)
    records = helpers.records(pytester)
    for check in ("clip_heldout", "mode_collapse"):
        assert "no CLIP on this embedded base" in records[("reference", check)]["message"]
        assert "pass --clip-model ARCH:TAG (e.g. ViT-L-14:openai" in records[("reference", check)]["message"]


def test_a_collapsed_adapter_fails_mode_collapse(pytester, write_lora):
    """Renders of `collapse.safetensors` are all one picture whatever the prompt or seed."""
    pytester.makeconftest(injected("images[:] = images[0]"))
    adapters = (
        "--adapter",
        write_lora("kohya", "collapse.safetensors"),
        "--adapter",
        write_lora("kohya", "good.safetensors"),
    )
    result = pytester.runpytest_inprocess(*adapters, *FAST_ALL_SEEDS, "-k", "mode_collapse")
    result.assert_outcomes(passed=1, failed=1)
    message = helpers.records(pytester)[("collapse.safetensors", "mode_collapse")]["message"]
    assert "diversity across seeds is 0% of the base's (floor 50%)" in message


def test_renders_pushed_away_from_the_corpus_fail_kid_and_cmmd_and_toward_it_pass(pytester, write_lora):
    """The adapter's renders are tinted red (a style, made certain by injection); a red corpus must find them closer
    than the base, a blue corpus farther."""
    pytester.makeconftest(RED_STYLE)
    write_tinted_corpora(pytester.path, count=12)
    run = (
        "--adapter",
        write_lora("kohya", "style.safetensors"),
        *FAST_ALL_SEEDS,
        "--render-seeds",
        "6",
        "-k",
        "kid or cmmd",
    )
    pytester.runpytest_inprocess(*run, "--reference-images", pytester.path / "red").assert_outcomes(passed=2)
    pytester.runpytest_inprocess(*run, "--reference-images", pytester.path / "blue").assert_outcomes(failed=2)
    assert (
        "not closer to the corpus than the base" in helpers.records(pytester)[("style.safetensors", "kid")]["message"]
    )


def test_fid_gates_from_fifty_images_a_side(pytester, write_lora):
    """The same red style as above, 50 renders and 50 corpus images a side: FID gates both ways."""
    pytester.makeconftest(RED_STYLE)
    write_tinted_corpora(pytester.path, count=50)
    run = ("--adapter", write_lora("kohya", "style.safetensors"), *FAST_ALL_SEEDS, "--render-seeds", "25", "-k", "fid")
    pytester.runpytest_inprocess(*run, "--reference-images", pytester.path / "red").assert_outcomes(passed=1)
    pytester.runpytest_inprocess(*run, "--reference-images", pytester.path / "blue").assert_outcomes(failed=1)
    record = helpers.records(pytester)[("style.safetensors", "fid")]
    assert record["details"]["generated"] == 50 and "fid: adapted renders are not closer" in record["message"]


def test_leaked_prompts_are_left_out_and_an_all_leaked_set_is_an_error(pytester, write_lora, tmp_path):
    (tmp_path / "heldout.txt").write_text("a red sun at noon\na bowl of fruit on a table\n")
    (tmp_path / "captions.txt").write_text("red sun, blue hills\n")
    adapter = write_lora("kohya", "good.safetensors")
    run = ("--adapter", adapter, *FAST_ALL_SEEDS, "-k", "clip_heldout", "--train-captions", tmp_path / "captions.txt")
    pytester.runpytest_inprocess(*run, "--heldout-prompts", tmp_path / "heldout.txt").assert_outcomes(
        skipped=1
    )  # self-test CLIP
    record = helpers.records(pytester)[("good.safetensors", "clip_heldout")]
    assert record["details"]["leaked_prompts"] == ["a red sun at noon"]
    assert {r["prompt"] for r in record["details"]["per_render"]} == {"a bowl of fruit on a table"}
    (tmp_path / "heldout.txt").write_text("a red sun at noon\n")
    pytester.runpytest_inprocess(*run, "--heldout-prompts", tmp_path / "heldout.txt").assert_outcomes(failed=1)
    record = helpers.records(pytester)[("good.safetensors", "clip_heldout")]
    assert record["status"] == "error" and "every held-out prompt overlaps the training captions" in record["message"]


@pytest.mark.parametrize(
    "files, message",
    [({}, "*0 images found*"), ({"a.png": b"not an image", "b.png": b"nor this"}, "*a.png is not a readable image*")],
)
def test_bad_image_folders_are_usage_errors(pytester, files, message):
    folder = pytester.path / "corpus"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    result = pytester.runpytest_inprocess(
        "--adapter", "x.safetensors", "--reference-images", folder, "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_an_adapter_that_wrecks_prompt_following_fails_clip_heldout(pytester, write_lora):
    """Its renders turn red whatever the prompt asks; injected features make "the prompt asks for grey" certain."""
    pytester.makeconftest(injected("images[:] = (0.2 * images + 0.8 * np.array([230, 20, 20])).astype(np.uint8)"))
    adapters = (
        "--adapter",
        write_lora("kohya", "red.safetensors"),
        "--adapter",
        write_lora("kohya", "good.safetensors"),
    )
    result = pytester.runpytest_inprocess(*adapters, *FAST_ALL_SEEDS, "-k", "clip_heldout")
    result.assert_outcomes(passed=1, failed=1)
    record = helpers.records(pytester)[("red.safetensors", "clip_heldout")]
    assert "held-out CLIP score drops" in record["message"] and record["details"]["ci95"][1] < -2
    assert record["details"]["model"] == "injected colour features"


def test_renders_that_copy_a_training_image_fail_mode_collapse(pytester, write_lora):
    """--train-images holding the adapter's own held-out renders: each render is a copy of one."""
    adapter = write_lora("kohya", "copycat.safetensors")
    train = pytester.path / "train"
    train.mkdir()
    pytester.makeconftest(
        f"""
        from PIL import Image

        def pytest_lora_render(harness, slot, scale, jobs, watch, on_step):
            if slot is None or scale != 1.0:
                return None
            rendered = harness.renderer.render(slot, scale, jobs, watch, on_step)
            for i, image in enumerate(rendered.images):
                Image.fromarray(image).save(r"{train}" + f"/{{i}}.png")
            return rendered
        """
    )
    pytester.runpytest_inprocess("--adapter", adapter, *FAST_ALL_SEEDS, "-k", "clip_heldout")  # saves them
    pytester.makeconftest(injected())
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, *FAST_ALL_SEEDS, "-k", "mode_collapse", "--train-images", train
    )
    result.assert_outcomes(failed=1)
    record = helpers.records(pytester)[("copycat.safetensors", "mode_collapse")]
    assert "held-out renders nearly copy a training image (similarity > 0.95)" in record["message"]
    assert min(record["details"]["nearest_training_similarity"]) > 0.999


def test_frechet_distance_in_the_features_span_equals_the_full_one():
    """With fewer images than dimensions the distance is computed in their span: the same value, much faster."""
    from torchmetrics.image.fid import _compute_fid

    generator = torch.Generator().manual_seed(2)
    x = torch.randn(12, 300, generator=generator, dtype=torch.float64)
    y = torch.randn(9, 300, generator=generator, dtype=torch.float64) + 0.3
    full = float(_compute_fid(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)))
    assert frechet_distance(x, y) == pytest.approx(full, rel=1e-6)


def test_a_local_open_clip_checkpoint_replaces_the_self_test_model(pytester, write_lora, tmp_path):
    """`--clip-model ARCH:PATH` as a user with real weights runs it: open_clip's ViT-S-32 from a local file
    (seeded here, so its scores mean nothing; what is tested is that it, not the self-test model, scores)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(2)  # seeded towers whose cosines are positive for every held-out prompt, so scores move
    checkpoint = tmp_path / "vit-s-32.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model("ViT-S-32").state_dict().items()}, checkpoint)
    run = (
        "--adapter",
        write_lora("kohya", "good.safetensors"),
        *FAST_ALL_SEEDS,
        "--clip-model",
        f"ViT-S-32:{checkpoint}",
    )
    pytester.runpytest_inprocess(*run, "-k", "clip_heldout or mode_collapse")
    records = helpers.records(pytester)
    for check in ("clip_heldout", "mode_collapse"):
        record = records[("good.safetensors", check)]
        assert record["details"]["model"] == f"open_clip ViT-S-32 ({checkpoint})"
        assert "self-test" not in record["message"] and isinstance(record["value"], float)
    # It gates, as the self-test model never does: the margin decides, either side of the drop it measured.
    low = records[("good.safetensors", "clip_heldout")]["details"]["ci95"][0]
    assert low < 0  # seeded weights: this adapter's renders score lower, so a margin can fail it
    for margin, status in ((-low / 2, "failed"), (-low * 2, "passed")):
        pytester.runpytest_inprocess(*run, "-k", "clip_heldout", "--clip-margin", str(margin))
        assert helpers.records(pytester)[("good.safetensors", "clip_heldout")]["status"] == status
