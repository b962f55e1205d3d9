"""weight_health: the spectral math against a dense SVD, and bad adapters failing it through the plugin."""

import json
import math

import pytest
import torch

from lora_harness.loading.lycoris_modules import LycorisFactors
from lora_harness.verdicts.weight_health import (
    ModuleHealth,
    entropy_effective_rank,
    evaluate_weight_health,
    lycoris_health,
    module_health,
    singular_values,
)

FAST = ("--reference-steps", "10", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")


@pytest.mark.parametrize(
    "out_features, rank, in_shape", [(64, 4, (32,)), (320, 8, (768,)), (16, 4, (8, 3, 3)), (5, 8, (7,))]
)
def test_spectrum_from_the_factors_matches_a_dense_svd(out_features, rank, in_shape):
    generator = torch.Generator().manual_seed(0)
    down = torch.randn(rank, *in_shape, generator=generator, dtype=torch.float64)
    up = torch.randn(out_features, rank, generator=generator, dtype=torch.float64)
    dense = up @ down.reshape(rank, -1)
    expected = torch.linalg.svdvals(dense)[: min(rank, out_features)]
    assert torch.allclose(
        singular_values(down.reshape(rank, -1), up).sort(descending=True).values[: len(expected)],
        expected,
        rtol=1e-9,
        atol=1e-9,
    )
    health = module_health("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", down, up, scale=2.0)
    assert health.frobenius == pytest.approx(2.0 * float(torch.linalg.matrix_norm(dense)), rel=1e-9)
    assert health.spectral == pytest.approx(2.0 * float(expected[0]), rel=1e-9)


def test_entropy_effective_rank():
    assert entropy_effective_rank(torch.tensor([3.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert entropy_effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert 1.0 < entropy_effective_rank(torch.tensor([4.0, 1.0, 0.5, 0.1])) < 4.0
    assert entropy_effective_rank(torch.zeros(4)) == 0.0
    assert math.isnan(module_health("m", torch.full((4, 8), float("nan")), torch.ones(8, 4), 1.0).frobenius)


def test_dead_exploding_and_nan_adapters_fail_and_the_reference_passes(pytester, write_lora):
    def dead_half(lora):
        return {k: (a, torch.zeros_like(b) if i % 2 else b) for i, (k, (a, b)) in enumerate(sorted(lora.items()))}

    def exploding(lora):
        first = sorted(lora)[0]
        return {**lora, first: (lora[first][0], lora[first][1] * 1000)}

    def nan(lora):
        first = sorted(lora)[0]
        return {**lora, first: (lora[first][0], torch.full_like(lora[first][1], float("nan")))}

    adapters = {
        "good.safetensors": write_lora("kohya", "good.safetensors"),
        "dead.safetensors": write_lora("kohya", "dead.safetensors", edit=dead_half),
        "exploding.safetensors": write_lora("kohya", "exploding.safetensors", edit=exploding),
        "nan": write_lora("peft", "nan", edit=nan),
    }
    args = [a for p in adapters.values() for a in ("--adapter", p)]
    result = pytester.runpytest_inprocess("--adapter", "reference", *args, *FAST, "-k", "weight_health")
    result.assert_outcomes(passed=2, failed=3)
    records = {
        r["adapter"]: r for r in json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    }
    assert records["reference"]["status"] == records["good.safetensors"]["status"] == "passed"
    assert "16 of 32 modules (50%) have ΔW ≈ 0 (allowed 10%)" in records["dead.safetensors"]["message"]
    assert (
        "far outside their block, first unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
        in records["exploding.safetensors"]["message"]
    )
    assert "hold NaN or Inf" in records["nan"]["message"]
    good = records["good.safetensors"]["details"]
    assert len(good["modules"]) == 32 and set(good["per_block"]) == {
        "down/attn1",
        "down/attn2",
        "mid/attn1",
        "mid/attn2",
        "up/attn1",
        "up/attn2",
    }
    assert 0 < good["median_effective_rank_ratio"] <= 1
    html = (pytester.path / "lora-report" / "report.html").read_text()
    assert "Median effective rank per block" in html


def test_effective_rank_gates_only_when_asked(pytester, write_lora):
    def rank_one(lora):
        return {k: (a[:1].repeat(4, 1), b) for k, (a, b) in lora.items()}  # four identical rows: rank 1 paid as 4

    path = write_lora("kohya", "rank1.safetensors", edit=rank_one)
    args = ("--adapter", path, "--reference-steps", "0", "-p", "no:cacheprovider", "-k", "weight_health")
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1)
    record = json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"][0]
    assert record["details"]["warning"] == "median effective rank is 25% of the paid rank"
    gated = pytester.runpytest_inprocess(*args, "--min-effective-rank-ratio", "0.5")
    gated.assert_outcomes(failed=1)
    gated.stdout.fnmatch_lines(["*median effective rank is 25% of the paid rank (allowed 50%)*"])


@pytest.mark.parametrize("kind", ["loha", "lokr", "lokr-decomposed", "lokr-conv"])
def test_lycoris_spectra_from_factors_match_the_whole_delta(kind):
    """The structured shortcuts give ΔW's own singular values, checked against the matrix peft's formulas build."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if kind == "loha":
        roles = {
            "hada_w1_a": randn(12, 3),
            "hada_w1_b": randn(3, 10),
            "hada_w2_a": randn(12, 3),
            "hada_w2_b": randn(3, 10),
        }
        delta = (roles["hada_w1_a"] @ roles["hada_w1_b"]) * (roles["hada_w2_a"] @ roles["hada_w2_b"])
    elif kind == "lokr":
        roles = {"lokr_w1": randn(3, 2), "lokr_w2": randn(4, 5)}
        delta = torch.kron(roles["lokr_w1"], roles["lokr_w2"])
    elif kind == "lokr-decomposed":
        roles = {"lokr_w1": randn(3, 2), "lokr_w2_a": randn(4, 2), "lokr_w2_b": randn(2, 5)}
        delta = torch.kron(roles["lokr_w1"], roles["lokr_w2_a"] @ roles["lokr_w2_b"])
    else:  # a 3x3 convolution: kron(w1, w2) over the kernel, as LyCORIS and peft build it
        roles = {"lokr_w1": randn(2, 3), "lokr_w2": randn(4, 2, 3, 3)}
        delta = torch.kron(roles["lokr_w1"][:, :, None, None], roles["lokr_w2"]).reshape(8, -1)
    factors = LycorisFactors(roles, 0.5, module=None, algo="LoHa" if kind == "loha" else "LoKr")
    health = lycoris_health("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", factors)
    singular = torch.linalg.svdvals(delta * 0.5)
    assert health.frobenius == pytest.approx(float(singular.square().sum().sqrt()), rel=1e-9)
    assert health.spectral == pytest.approx(float(singular.max()), rel=1e-9)
    assert health.effective_rank == pytest.approx(entropy_effective_rank(singular), rel=1e-6)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_shortcuts_agree_with_the_delta_lycoris_itself_computes(algo):
    """The structured spectra against the ΔW the module LyCORIS builds from the same tensors applies, measured
    through its forward: the path every other algo takes."""
    from lycoris.modules import get_module, make_module

    generator = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(12, 8)
    if algo == "loha":
        roles = {
            f"hada_w{i}_{s}": torch.randn(8 if s == "a" else 3, 3 if s == "a" else 12, generator=generator)
            for i in (1, 2)
            for s in "ab"
        }
        roles["alpha"], name = torch.tensor(6.0), "LoHa"
    else:
        roles = {"lokr_w1": torch.randn(2, 3, generator=generator), "lokr_w2": torch.randn(4, 4, generator=generator)}
        roles["alpha"], name = torch.tensor(1.0), "LoKr"
    module = make_module(*get_module({f"m.{r}": t for r, t in roles.items()}, "m"), "m", layer)
    structured = lycoris_health("unet.x", LycorisFactors(roles, float(module.scale), module, name))
    whole = lycoris_health("unet.x", LycorisFactors(roles, float(module.scale), module, f"{name} (via ΔW)"))
    assert structured.frobenius == pytest.approx(whole.frobenius, rel=1e-6) and whole.frobenius > 0
    assert structured.spectral == pytest.approx(whole.spectral, rel=1e-6)


def test_a_rotation_or_scaling_is_judged_relative_to_the_weight_it_changes():
    """OFT and (IA)³ change W by (R − I)·W or diag(w)·W: a layer whose W is 5x its neighbours' (CLIP's out_proj)
    gets a 5x ΔW from a healthy adapter; judged per ‖W‖ it is no outlier, an additive ΔW 5x its block's is one."""
    block = "text_encoder"

    def modules(weight_norms):
        norms = [1.0, 1.1, 0.9, 1.05, 5.0, 0.95]
        return [
            ModuleHealth(f"text_encoder.m{i}", block, n, n, 2.0, 0, True, weight_norm=w)
            for i, (n, w) in enumerate(zip(norms, weight_norms))
        ]

    rotated = evaluate_weight_health("oft", modules([1.0, 1.1, 0.9, 1.05, 5.0, 0.95]), 0.1, 6.0, 0.0)
    added = evaluate_weight_health("lora", modules([None] * 6), 0.1, 6.0, 0.0)
    assert rotated.status == "passed", rotated.message
    assert added.status == "failed" and "1 modules have a ΔW norm far outside their block" in added.message


@pytest.mark.parametrize("algo", ["lokr-dora", "ia3", "loha"])
def test_dora_and_multiplicative_lycoris_modules_are_judged_per_weight_norm(tmp_path, algo):
    """DoRA rescales each row to a magnitude that starts as W's, (IA)³ scales W: both per ‖W‖; LoHa adds: absolute."""
    from lora_harness.bases.families import pipeline_signature
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.fixtures.adapter_writers import write_lycoris
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.kinds.lycoris import apply_lycoris

    pipeline = build_tiny_pipeline()
    args = {"lokr-dora": {"algo": "lokr", "dora_wd": True}, "ia3": {"algo": "ia3"}, "loha": {"algo": "loha"}}[algo]
    path = write_lycoris(build_tiny_pipeline(), tmp_path / f"{algo}.safetensors", **args)
    application = apply_lycoris(pipeline, pipeline_signature(pipeline), read_adapter(path), "x")
    name, factors = next(iter(application.lycoris_factors.items()))
    health = lycoris_health(name, factors)
    layer = factors.module.org_module[0]
    if algo == "loha":
        assert health.weight_norm is None and health.compared == health.frobenius
    else:
        assert health.weight_norm == pytest.approx(float(layer.weight.double().norm()))
        assert health.compared == pytest.approx(health.frobenius / health.weight_norm)


@pytest.mark.parametrize("shape", [(40, 400), (400, 40), (60, 90)], ids=["wide", "tall", "near-square"])
def test_singular_values_through_the_gram_matrix_equal_the_svds(shape):
    """A ΔW of rank 8 plus noise: its large and its small singular values (10⁴ times smaller) as the SVD has them."""
    from lora_harness.verdicts.weight_health import matrix_singular_values

    generator = torch.Generator().manual_seed(0)
    rows, columns = shape
    low_rank = torch.randn(rows, 8, generator=generator, dtype=torch.float64) @ torch.randn(
        8, columns, generator=generator, dtype=torch.float64
    )
    matrix = low_rank + 1e-3 * torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    expected = torch.linalg.svdvals(matrix)
    assert torch.allclose(matrix_singular_values(matrix), expected, rtol=1e-6, atol=0)
