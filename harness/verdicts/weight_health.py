"""weight_health: ΔW = up · down · (alpha / rank) per module, judged before any image is rendered.

The spectrum comes from the small r × r problem: with up = Q_u R_u and downᵀ = Q_d R_d (thin QR),
up · down = Q_u (R_u R_dᵀ) Q_dᵀ, so ΔW's singular values are those of the r × r matrix R_u R_dᵀ.
No out × in matrix is formed.

Effective rank is the entropy effective rank (Roy & Vetterli, 2007): exp(H(p)) with p_i = σ_i / Σσ;
1 for a rank-1 update, r when all r directions carry equal weight.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from lora_harness.bases.families import UNET, block_of
from lora_harness.loading.lycoris_modules import LycorisNetwork
from lora_harness.verdicts.results import verdict

CHECK = "weight_health"
# A module whose ΔW norm is below this share of the adapter's median module norm did not train.
DEAD_RELATIVE = 1e-4
MAD_FLOOR = 0.05  # log10 units (x1.12): identical modules would otherwise make any tiny difference infinite


@dataclass(frozen=True)
class ModuleHealth:
    module: str
    block: str
    frobenius: float
    spectral: float
    effective_rank: float
    rank: int
    finite: bool
    weight_norm: float | None = None  # ‖W‖ of the layer, for algos whose ΔW scales with it: compared relative to it

    @property
    def compared(self) -> float:
        """The norm judged against the block's: ‖ΔW‖, or ‖ΔW‖ / ‖W‖ where the algo rotates or scales W."""
        return self.frobenius / self.weight_norm if self.weight_norm else self.frobenius


# LyCORIS algos whose ΔW is a rotation or scaling of the layer's own weight ((R − I)·W, diag(w)·W), and DoRA, which
# rescales each row to a magnitude that starts as W's: layers whose weights differ in norm (CLIP initialises out_proj
# ~5x q, k, v) differ in ΔW by as much when the adapter is healthy.
MULTIPLICATIVE = ("(IA)³", "Diag-OFT", "BOFT")


def module_health(
    module: str, down: torch.Tensor, up: torch.Tensor, scale: float, architecture: str = UNET
) -> ModuleHealth:
    """Norms and effective rank of scale · up · down, from the factors (conv factors flattened as the field does)."""
    down = down.detach().double().reshape(down.shape[0], -1)  # [r, in·kh·kw]
    up = up.detach().double().reshape(up.shape[0], -1)  # [out, r]
    rank = down.shape[0]
    finite = bool(torch.isfinite(down).all() and torch.isfinite(up).all() and math.isfinite(scale))
    if not finite:
        return ModuleHealth(module, block_of(module, architecture), math.nan, math.nan, math.nan, rank, False)
    return _from_spectrum(module, block_of(module, architecture), singular_values(down, up) * abs(scale), rank)


def lycoris_health(module: str, factors, architecture: str = UNET) -> ModuleHealth:
    """Norms and effective rank of a LyCORIS module's ΔW (`factors`: lycoris_modules.LycorisFactors). LoHa and
    LoKr from their factors without forming ΔW: LoHa (w1a w1b) ⊙ (w2a w2b) is the rank-r1·r2 product of their
    column- and row-wise Khatri-Rao products; LoKr w1 ⊗ w2 has the products σᵢ(w1)·σⱼ(w2) as its singular values.
    The other algos (Tucker forms, DoRA, (IA)³, OFT, full, norms, GLoRA) from the ΔW LyCORIS computes for the one
    module. Its rank is left 0: none has one paid rank to compare the effective rank with."""
    block = block_of(module, architecture)
    flat = {role: t.detach().double().reshape(t.shape[0], -1) for role, t in factors.roles.items() if t.ndim}
    if not all(torch.isfinite(t).all() for t in flat.values()) or not math.isfinite(factors.scale):
        return ModuleHealth(module, block, math.nan, math.nan, math.nan, 0, False)
    if factors.algo == "LoHa":
        w1a, w1b, w2a, w2b = flat["hada_w1_a"], flat["hada_w1_b"], flat["hada_w2_a"], flat["hada_w2_b"]
        up = (w1a[:, :, None] * w2a[:, None, :]).reshape(w1a.shape[0], -1)  # [out, r1·r2]
        down = (w1b[:, None, :] * w2b[None, :, :]).reshape(-1, w1b.shape[1])  # [r1·r2, in]
        singular = singular_values(down, up) * abs(factors.scale)
    elif factors.algo == "LoKr":
        w1 = flat["lokr_w1"] if "lokr_w1" in flat else flat["lokr_w1_a"] @ flat["lokr_w1_b"]
        w2 = flat["lokr_w2"] if "lokr_w2" in flat else flat["lokr_w2_a"] @ flat["lokr_w2_b"]
        singular = torch.outer(torch.linalg.svdvals(w1), torch.linalg.svdvals(w2)).flatten() * abs(factors.scale)
    else:
        singular = matrix_singular_values(_module_delta(factors.module))
    health = _from_spectrum(module, block, singular, rank=0)
    if factors.algo.split(" ")[0] in MULTIPLICATIVE or "DoRA" in factors.algo:
        weight = factors.module.org_module[0].weight
        health = dataclasses.replace(health, weight_norm=float(weight.detach().double().norm()))
    return health


@torch.no_grad()
def _module_delta(module) -> torch.Tensor:
    """The ΔW the module applies at multiplier 1, as a 2-D float64 matrix (a norm's: one row), checked against its
    forward. LyCORIS's own ΔW (`get_diff_weight`; DoRA: the merged weight less W) is the candidate, but in LyCORIS
    4.1.3 it is LoHa's and LoKr's scaled twice and Full's is off (measured here against the forward): its factor to
    what the forward adds is measured on a seeded input, and where the forward is no multiple of it, ΔW is measured
    through the forward column by column (one probe per input channel and kernel position: exact, and slow)."""
    from lycoris.modules import NormModule

    layer = module.org_module[0]
    if isinstance(module, NormModule):  # an affine offset: the vector it adds to the norm's weight
        return module.get_diff_weight(multiplier=1.0)[0].detach().double().cpu().reshape(1, -1)
    weight = layer.weight
    if getattr(module, "wd", False):
        candidate = module.get_merged_weight(multiplier=1.0)[0] - weight
    else:
        candidate = module.get_diff_weight(multiplier=1.0)[0]
    candidate = candidate.reshape(weight.shape).to(weight.dtype)
    generator = torch.Generator().manual_seed(0)
    shape = (8, layer.in_features) if isinstance(layer, torch.nn.Linear) else (2, layer.in_channels, 8, 8)
    probe = torch.randn(shape, generator=generator).to(weight)
    added = _added(module, probe, lambda out: out)
    predicted = _apply(layer, probe, candidate)
    factor = float((added * predicted).sum() / (predicted * predicted).sum()) if predicted.any() else 0.0
    # What the forward adds is a difference of two outputs: below the dtype's rounding of the output (an SD1.5 LoHa
    # Tucker conv: 1e-4 of an output of norm 214 in float32) the forward can tell nothing finer, the columns less so.
    resolution = torch.finfo(weight.dtype).eps * float(layer(probe).norm())
    if (added - factor * predicted).norm() <= max(1e-3 * float(added.norm()), resolution, 1e-12):
        return (factor * candidate.double()).cpu().reshape(weight.shape[0], -1)
    probes, read = _probes(layer)
    columns = torch.cat([_added(module, probes[i : i + 1024], read) for i in range(0, len(probes), 1024)])
    return columns.double().cpu().T  # [out, in·kh·kw]


def _added(module, inputs, read) -> torch.Tensor:
    """What the module adds to its layer's output for `inputs`, less what it adds to its bias."""
    layer = module.org_module[0]
    zero = torch.zeros_like(inputs[:1])
    with LycorisNetwork({"m": module}).active(1.0):
        adapted = read(layer(inputs)) - read(layer(zero))
    return adapted - (read(layer(inputs)) - read(layer(zero)))


def _apply(layer, inputs, weight) -> torch.Tensor:
    """The layer's own operation with `weight` and no bias."""
    if isinstance(layer, torch.nn.Linear):
        return torch.nn.functional.linear(inputs, weight)
    return layer._conv_forward(inputs, weight, None)


def _probes(layer):
    """One-hot inputs whose outputs are the layer's weight columns, and how to read them: the identity for a linear;
    for a convolution, one input per (input channel, kernel row, kernel column), read at an output pixel whose
    receptive field lies inside the input (stride and zero padding as the layer has them)."""
    parameter = next(layer.parameters())
    if isinstance(layer, torch.nn.Linear):
        return torch.eye(layer.in_features, dtype=parameter.dtype, device=parameter.device), lambda out: out
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    qh, qw = -(-ph // sh), -(-pw // sw)  # the first output pixel whose field starts inside the input
    top, left = qh * sh - ph, qw * sw - pw
    count = layer.in_channels * kh * kw
    probes = torch.zeros(count, layer.in_channels, top + kh, left + kw, dtype=parameter.dtype, device=parameter.device)
    index = torch.arange(count)
    channel, row, column = index // (kh * kw), (index // kw) % kh, index % kw
    probes[index, channel, top + row, left + column] = 1.0
    return probes, lambda out: out[:, :, qh, qw]


def _from_spectrum(module: str, block: str, singular: torch.Tensor, rank: int) -> ModuleHealth:
    return ModuleHealth(
        module=module,
        block=block,
        frobenius=float(singular.square().sum().sqrt()),
        spectral=float(singular.max()) if singular.numel() else 0.0,
        effective_rank=entropy_effective_rank(singular),
        rank=rank,
        finite=True,
    )


def matrix_singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a float64 matrix. A wide one (a convolution's [out, in·kh·kw]) through the eigenvalues of
    its Gram matrix on the short side: a 1280 × 11520 ΔW of SD1.5 takes 0.5 s so, 9 s through its SVD (one core); float64 keeps
    the squared values exact far below what the norms and the effective rank read."""
    short, long = sorted(matrix.shape)
    if long < 4 * short:
        return torch.linalg.svdvals(matrix)
    gram = matrix @ matrix.T if matrix.shape[0] == short else matrix.T @ matrix
    return torch.linalg.eigvalsh(gram).clamp(min=0).sqrt().flip(0)


def singular_values(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Singular values of up @ down (up [out, r], down [r, in]) through the r × r core."""
    _, r_up = torch.linalg.qr(up)
    _, r_down = torch.linalg.qr(down.T)
    return torch.linalg.svdvals(r_up @ r_down.T)


def entropy_effective_rank(singular: torch.Tensor) -> float:
    total = float(singular.sum())
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def evaluate_weight_health(
    adapter: str, modules: list[ModuleHealth], dead_share: float, outlier_k: float, min_effective_rank_ratio: float
):
    problems = []
    nonfinite = [m.module for m in modules if not m.finite]
    if nonfinite:
        problems.append(f"{len(nonfinite)} modules hold NaN or Inf, first {nonfinite[0]}")
    healthy = [m for m in modules if m.finite]
    median_norm = _median([m.frobenius for m in healthy]) if healthy else 0.0
    dead = [m.module for m in healthy if m.frobenius <= DEAD_RELATIVE * median_norm or m.frobenius == 0.0]
    share = len(dead) / len(modules) if modules else 0.0
    if share > dead_share:
        problems.append(
            f"{len(dead)} of {len(modules)} modules ({share:.0%}) have ΔW ≈ 0 (allowed {dead_share:.0%}), first {dead[0]}"
        )
    outliers = _outliers([m for m in healthy if m.module not in dead], outlier_k)
    if outliers:
        module, z, norm, block_median = outliers[0]
        relative = (
            " (per ‖W‖: it rotates, scales or renormalises W)"
            if next(m for m in healthy if m.module == module).weight_norm
            else ""
        )
        problems.append(
            f"{len(outliers)} modules have a ΔW norm{relative} far outside their block, first {module}: {norm:.4g} vs the "
            f"block's median {block_median:.4g} ({z:.1f} robust deviations, allowed {outlier_k:g})"
        )
    ranks = [m.effective_rank / m.rank for m in healthy if m.module not in dead and m.rank]
    rank_ratio = _median(ranks) if ranks else 0.0
    if min_effective_rank_ratio and rank_ratio < min_effective_rank_ratio:
        problems.append(
            f"median effective rank is {rank_ratio:.0%} of the paid rank (allowed {min_effective_rank_ratio:.0%})"
        )
    per_block: dict[str, dict[str, float]] = {}
    for block in sorted({m.block for m in healthy}):
        members = [m for m in healthy if m.block == block]
        per_block[block] = {
            "median_frobenius": _median([m.frobenius for m in members]),
            "median_effective_rank": _median([m.effective_rank for m in members]),
        }
    details = {
        "modules": [
            {
                "module": m.module,
                "block": m.block,
                "frobenius": m.frobenius,
                "spectral": m.spectral,
                "effective_rank": m.effective_rank,
                "rank": m.rank,
                "weight_norm": m.weight_norm,
            }
            for m in modules
        ],
        "per_block": per_block,
        "dead": dead[:50],
        "dead_share": share,
        "outliers": [{"module": o[0], "robust_z": o[1]} for o in outliers[:50]],
        "median_effective_rank_ratio": rank_ratio,
        "warning": None
        if rank_ratio >= 0.5 or not ranks
        else f"median effective rank is {rank_ratio:.0%} of the paid rank",
    }
    return verdict(adapter, CHECK, not problems, len(problems), 0, "; ".join(problems), details)


def _outliers(modules: list[ModuleHealth], k: float) -> list[tuple[str, float, float, float]]:
    """(module, robust z, norm, block median) for norms beyond k MADs of their block's log10 norms."""
    found = []
    for block in {m.block for m in modules}:
        members = [m for m in modules if m.block == block]
        if len(members) < 3:
            continue  # too few to say what is normal
        logs = [math.log10(m.compared) for m in members]
        centre = _median(logs)
        mad = max(_median([abs(x - centre) for x in logs]), MAD_FLOOR)
        for m, x in zip(members, logs):
            z = abs(x - centre) / (1.4826 * mad)
            if z > k:
                found.append((m.module, z, m.compared, 10**centre))
    return sorted(found, key=lambda o: -o[1])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return 0.0
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
