"""The math behind the quality checks, as pure functions over embeddings: each tested against its formula."""

from __future__ import annotations

import re

import numpy as np
import torch

FID_MIN_SAMPLES = 50  # below this per side FID's bias dominates (Chong & Forsyth 2020; Jayasumana et al. 2024)
CMMD_SIGMA, CMMD_SCALE = 10.0, 1000.0  # as in the CMMD paper's reference implementation


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> np.ndarray:
    """100 x cosine(image_i, text_i), clipped at 0, for paired rows of unit-norm embeddings."""
    return (100 * (image_embeddings * text_embeddings).sum(-1).clamp(min=0)).double().numpy()


def bootstrap_ci(values: np.ndarray, statistic=np.mean, resamples: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap confidence interval of `statistic` over `values` (resampled with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    estimates = np.array([statistic(values[p]) for p in picks])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(estimates, tail)), float(np.percentile(estimates, 100 - tail))


def mean_pairwise_distance(embeddings: torch.Tensor) -> float | None:
    """Mean cosine distance (1 - cos) over all pairs of unit-norm embeddings; None for fewer than two."""
    n = len(embeddings)
    if n < 2:
        return None
    similarity = embeddings @ embeddings.T
    upper = torch.triu_indices(n, n, offset=1)
    return float((1 - similarity[upper[0], upper[1]]).mean())


def cmmd(x: torch.Tensor, y: torch.Tensor, sigma: float = CMMD_SIGMA, scale: float = CMMD_SCALE) -> float:
    """CMMD (Jayasumana et al., 2024): scale x MMD² with a Gaussian RBF kernel on CLIP embeddings."""
    x, y = x.double(), y.double()
    gamma = 1 / (2 * sigma**2)

    def kernel_mean(a, b):
        distances = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return torch.exp(-gamma * distances).mean()

    return float(scale * (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)))


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets, with torchmetrics' own formula."""
    from torchmetrics.image.fid import _compute_fid

    x, y = x.double(), y.double()
    if x.shape[1] > len(x) + len(y):
        # Fewer images than feature dimensions (2048 for Inception): the means and covariances live in the span of
        # the features, and the distance is invariant under rotation, so computing it in that span is exact and
        # turns 2048 x 2048 eigenproblems into ones the size of the image count.
        basis = torch.linalg.qr(torch.cat([x, y]).T).Q
        x, y = x @ basis, y @ basis
    return float(_compute_fid(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)))


def subsample_gap(
    base: torch.Tensor, adapted: torch.Tensor, reference: torch.Tensor, distance, resamples: int = 200, seed: int = 0
):
    """95% interval of distance(base, reference) - distance(adapted, reference) over random half-sets of the
    generated images (paired: the same prompts and seeds on both sides), drawn without replacement.

    Resampling with replacement (the plain bootstrap) duplicates images, and duplicates bias kernel and
    Fréchet distances upward enough to swamp the gap at tens of images; subsampling (Politis & Romano, 1994)
    stays valid for such statistics.
    """
    rng = np.random.default_rng(seed)
    half = max(2, len(base) // 2)
    gaps = []
    for _ in range(resamples):
        pick = torch.from_numpy(rng.choice(len(base), size=half, replace=False))
        gaps.append(distance(base[pick], reference) - distance(adapted[pick], reference))
    return float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))


def leaked(prompts: list[str], captions: list[str]) -> list[str]:
    """Held-out prompts that contain a training caption or tag (as whole words), or sit inside a caption."""
    phrases = {p.strip().lower() for caption in captions for p in caption.split(",") if len(p.strip()) >= 3}
    leaks = []
    for prompt in prompts:
        text = prompt.lower()
        if any(re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) for phrase in phrases) or any(
            text in caption.lower() for caption in captions
        ):
            leaks.append(prompt)
    return leaks
