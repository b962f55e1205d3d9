"""fid, kid, cmmd: adapted renders move toward a reference corpus (the style or subject) relative to the base."""

from __future__ import annotations

import math
import warnings

import torch

from lora_harness.verdicts.clip_model import self_test_verdict
from lora_harness.verdicts.quality import FID_MIN_SAMPLES, cmmd, frechet_distance, subsample_gap
from lora_harness.verdicts.results import SKIPPED, CheckResult, verdict

KID_SUBSETS = 50


def without_corpus(check: str, adapter: str) -> CheckResult:
    """What a distance check says with no corpus to measure against: asked first, before any feature model loads."""
    message = f"{check} needs a reference corpus: pass --reference-images DIR with images of the style or subject"
    return CheckResult(adapter, check, SKIPPED, message=message)


def evaluate_distance(check: str, adapter: str, features, renders, reference_images) -> CheckResult:
    """`renders()` -> (base RenderSet, adapted RenderSet), asked only when there is a corpus to compare with."""
    if reference_images is None:
        return without_corpus(check, adapter)
    base, adapted = renders()
    base_features = base.features(features.image_features)
    adapted_features = adapted.features(features.image_features)
    reference = features.image_features(reference_images)
    details = {"model": features.label, "generated": len(base_features), "reference": len(reference)}
    if check == "kid":
        result = _kid(adapter, base_features, adapted_features, reference, details)
    else:
        distance = frechet_distance if check == "fid" else cmmd
        before, after = distance(base_features, reference), distance(adapted_features, reference)
        low, high = subsample_gap(base_features, adapted_features, reference, distance)
        details.update(base=before, adapted=after, gap_ci95=[low, high])
        message = (
            f"{check}: adapted renders are not closer to the corpus than the base beyond the uncertainty "
            f"(base {before:.4g}, adapted {after:.4g}, 95% CI of the gap [{low:.3g}, {high:.3g}])"
        )
        result = verdict(adapter, check, low > 0, after, before, message, details)
        samples = min(len(base_features), len(reference))
        if check == "fid" and samples < FID_MIN_SAMPLES:
            result.status = SKIPPED
            result.message = (
                f"FID is reported ({after:.4g} adapted vs {before:.4g} base) but not gated: it is biased below "
                f"{FID_MIN_SAMPLES} images per side and here there are {samples}; KID and CMMD decide"
            )
    return self_test_verdict(result, features)


def _kid(adapter, base_features, adapted_features, reference, details):
    """torchmetrics' KernelInceptionDistance on the given features; closer by more than both std's combined."""
    before_mean, before_std = _torchmetrics_kid(base_features, reference)
    after_mean, after_std = _torchmetrics_kid(adapted_features, reference)
    margin = math.hypot(before_std, after_std)
    details.update(base=[before_mean, before_std], adapted=[after_mean, after_std], subsets=KID_SUBSETS)
    message = (
        f"kid: adapted renders are not closer to the corpus than the base beyond the uncertainty "
        f"(base {before_mean:.4g} ± {before_std:.2g}, adapted {after_mean:.4g} ± {after_std:.2g})"
    )
    return verdict(adapter, "kid", before_mean - after_mean > margin, after_mean, before_mean, message, details)


class _Features(torch.nn.Module):
    """Hands torchmetrics features already computed: each image is encoded once per run."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.features[indices.long().flatten()]


def _torchmetrics_kid(
    generated: torch.Tensor, reference: torch.Tensor, subset: int | None = None
) -> tuple[float, float]:
    """KID mean and std over subsets of half the smaller side (default): subsets of everything would all agree."""
    from torchmetrics.image.kid import KernelInceptionDistance

    features = torch.cat([generated, reference]).double()
    subset = subset or max(2, min(len(generated), len(reference)) // 2)
    with warnings.catch_warnings():  # it keeps every feature in memory: a few dozen small vectors here
        warnings.filterwarnings(
            "ignore", message="Metric `Kernel Inception Distance` will save all", category=UserWarning
        )
        metric = KernelInceptionDistance(feature=_Features(features), subsets=KID_SUBSETS, subset_size=subset)
    metric.update(torch.arange(len(generated), len(features)), real=True)
    metric.update(torch.arange(len(generated)), real=False)
    mean, std = metric.compute()
    return float(mean), float(std)
