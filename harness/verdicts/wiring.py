"""wiring: every tensor of the file landed, at the scale the file declares, and every LoRA layer runs."""

from __future__ import annotations

import numpy as np

from lora_harness.loading.application import Application, describe_unmatched
from lora_harness.rendering.renders import RenderSet
from lora_harness.verdicts.results import CheckResult, verdict

CHECK = "wiring"
SHOWN = 5  # how many offending names a message lists
DORA_SCALE_ZERO = (
    "not applicable: DoRA rescales each output channel by its magnitude at every LoRA scale, so a render at scale 0 "
    "is not the base's"
)


def evaluate_wiring(
    adapter: str,
    application: Application,
    adapted: RenderSet,
    at_scale_zero: RenderSet,
    base: RenderSet,
    tolerance: float,
) -> CheckResult:
    problems = []
    if application.unmatched or application.shape_mismatches:
        problems.append(describe_unmatched(application.unmatched, application.shape_mismatches))
    if application.value_mismatches:
        shown = ", ".join(application.value_mismatches[:SHOWN])
        problems.append(
            f"{len(application.value_mismatches)} tensors are not in their module with their values: {shown}"
        )
    if application.scale_mismatches:
        module, declared, applied = application.scale_mismatches[0]
        problems.append(
            f"{len(application.scale_mismatches)} layers apply another scale than the file declares, first {module}: "
            f"file alpha/rank = {declared:g}, applied {applied:g}"
        )
    silent = sorted(set(application.lora_layers) - adapted.layers_run)
    if silent:
        problems.append(
            f"{len(silent)} of {len(application.lora_layers)} LoRA layers never ran during a render: {', '.join(silent[:SHOWN])}"
        )
    scale_zero_diff = float(np.abs(at_scale_zero.images.astype(np.float64) - base.images).mean())
    scale_zero_control = "compared"
    if application.dora_modules:
        scale_zero_control = DORA_SCALE_ZERO
    elif scale_zero_diff > tolerance:
        problems.append(f"at scale 0 the render differs from the base by {scale_zero_diff:.4f} (allowed {tolerance:g})")
    ok = application.tensors > 0 and application.tensors_applied == application.tensors and not problems
    if application.tensors_applied != application.tensors:
        problems.insert(0, f"{application.tensors_applied} of {application.tensors} LoRA tensors applied")
    details = {
        "tensors": application.tensors,
        "tensors_applied": application.tensors_applied,
        "lora_layers": len(application.lora_layers),
        "lora_layers_run": len(adapted.layers_run),
        "unmatched_keys": [key for key, _, _ in application.unmatched[:50]],
        "nearest_modules": {key: near for key, _, near in application.unmatched[:50]},
        "shape_mismatches": [[key, list(want), list(got)] for key, want, got in application.shape_mismatches[:50]],
        "scale_mismatches": [[m, d, a] for m, d, a in application.scale_mismatches[:50]],
        "scale_zero_mean_abs_diff": scale_zero_diff,
        "scale_zero_control": scale_zero_control,
    }
    return verdict(adapter, CHECK, ok, application.tensors_applied, application.tensors, "; ".join(problems), details)
