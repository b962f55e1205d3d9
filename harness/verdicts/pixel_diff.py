"""pixel_diff: the adapter visibly changes same-seed renders; a determinism control proves the floor means something."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lora_harness.rendering.pictures import diff_heatmap, save_png
from lora_harness.rendering.renders import RenderSet
from lora_harness.verdicts.results import ERROR, CheckResult, verdict

CHECK = "pixel_diff"


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| over every pixel and channel, on the 0-255 scale."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def evaluate_pixel_diff(
    adapter: str,
    adapted: RenderSet,
    base: RenderSet,
    base_again: RenderSet,
    floor: float,
    tolerance: float,
    nonfinite_tensors: list[str],
) -> CheckResult:
    control = mean_abs_diff(base_again.images, base.images)
    per_job = [mean_abs_diff(a, b) for a, b in zip(adapted.images, base.images)]
    diff = float(np.mean(per_job))
    details = {
        "determinism_control": control,
        "determinism_tolerance": tolerance,
        "per_render": [{"prompt": p, "seed": s, "mean_abs_diff": d} for (p, s), d in zip(adapted.jobs, per_job)],
    }
    if control > tolerance:
        message = (
            f"determinism control failed: the base rendered twice differs by {control:.4f} (tolerance {tolerance:g}), "
            "so a difference cannot be attributed to the adapter; use --device cpu or fewer nondeterministic kernels"
        )
        return CheckResult(adapter, CHECK, ERROR, diff, floor, message, details)
    if nonfinite_tensors:
        shown = ", ".join(nonfinite_tensors[:5])
        return verdict(
            adapter,
            CHECK,
            False,
            diff,
            floor,
            f"{len(nonfinite_tensors)} adapter tensors hold NaN or Inf: {shown}",
            details,
        )
    if adapted.nonfinite_jobs:
        shown = "; ".join(f"{p!r} seed {s}" for p, s in adapted.nonfinite_jobs[:5])
        return verdict(adapter, CHECK, False, diff, floor, f"renders produced NaN or Inf: {shown}", details)
    message = f"mean |adapted - base| = {diff:.4f} on 0-255 is not above the floor {floor:g}: the adapter does not change the image"
    return verdict(adapter, CHECK, diff > floor, diff, floor, message, details)


def save_pictures(report_dir: Path, slot: str, base: RenderSet, adapted: RenderSet) -> list[dict]:
    """Base, adapted and |diff| heatmap per render as PNG files under the report folder (the base's once, shared by
    every adapter; the adapter's under its `slot`), for the report."""
    folder = report_dir / "images"

    def saved(image, path) -> str:  # relative, so the report folder can move as a whole
        return str(save_png(image, path).relative_to(report_dir))

    pictures = []
    for index, ((prompt, seed), base_image, adapted_image) in enumerate(zip(base.jobs, base.images, adapted.images)):
        heatmap, peak = diff_heatmap(adapted_image, base_image)
        stem = f"{index:02d}-seed{seed}"
        pictures.append(
            {
                "prompt": prompt,
                "seed": seed,
                "base": saved(base_image, folder / "base" / f"{stem}.png"),
                "adapted": saved(adapted_image, folder / slot / f"{stem}.png"),
                "diff": saved(heatmap, folder / slot / f"{stem}-diff.png"),
                "diff_max": peak,
            }
        )
    return pictures
