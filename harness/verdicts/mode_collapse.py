"""mode_collapse: the adapter keeps the base's diversity across seeds and prompts, and does not copy its training images."""

from __future__ import annotations

import numpy as np
import torch

from lora_harness.verdicts.clip_model import self_test_verdict
from lora_harness.verdicts.quality import mean_pairwise_distance
from lora_harness.verdicts.results import verdict

CHECK = "mode_collapse"


def diversity(embeddings: torch.Tensor, jobs: list[tuple[str, int]]) -> dict[str, float | None]:
    """Across seeds: mean over prompts of the pairwise distance of that prompt's seeds.
    Across prompts: pairwise distance of the per-prompt mean embeddings."""
    prompts = list(dict.fromkeys(prompt for prompt, _ in jobs))
    groups = [embeddings[[i for i, (p, _) in enumerate(jobs) if p == prompt]] for prompt in prompts]
    per_seed = [d for d in (mean_pairwise_distance(g) for g in groups) if d is not None]
    centroids = torch.nn.functional.normalize(torch.stack([g.mean(0) for g in groups]), dim=-1)
    return {
        "across_seeds": float(np.mean(per_seed)) if per_seed else None,
        "across_prompts": mean_pairwise_distance(centroids),
    }


def evaluate_mode_collapse(
    adapter: str, clip, base, adapted, floor: float, train_images, copy_similarity: float, heldout=None
):
    base_diversity = diversity(base.features(clip.image_features, unit=True), base.jobs)
    adapted_diversity = diversity(adapted.features(clip.image_features, unit=True), adapted.jobs)
    ratios = {
        axis: adapted_diversity[axis] / base_diversity[axis]
        for axis in base_diversity
        if base_diversity[axis] and adapted_diversity[axis] is not None
    }
    problems = [
        f"diversity {axis.replace('_', ' ')} is {ratio:.0%} of the base's (floor {floor:.0%})"
        for axis, ratio in ratios.items()
        if ratio < floor
    ]
    details = {"model": clip.label, "base": base_diversity, "adapted": adapted_diversity, "ratios": ratios}
    if train_images is not None and heldout is not None:
        similarity = heldout.features(clip.image_features, unit=True) @ clip.image_features(train_images).T
        nearest = similarity.max(dim=1).values
        copies = [f"{p!r} seed {s}" for (p, s), v in zip(heldout.jobs, nearest.tolist()) if v > copy_similarity]
        details["nearest_training_similarity"] = nearest.tolist()
        if copies:
            problems.append(
                f"{len(copies)} held-out renders nearly copy a training image (similarity > {copy_similarity:g}): {', '.join(copies[:3])}"
            )
    value = min(ratios.values()) if ratios else None
    message = "; ".join(problems) + "; the adapter paints the same picture whatever it is asked"
    result = verdict(adapter, CHECK, not problems, value, floor, message, details)
    return self_test_verdict(result, clip)
