"""What one adapter put in the pipeline, as every kind's loader reports it (`Application`), what is wrong with the
file itself (`file_defects`), and how keys that landed nowhere are described."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lora_harness.bases.families import UNET
from lora_harness.loading.lycoris_modules import LycorisFactors
from lora_harness.loading.replaced_modules import ReplacedModules


class OnBase(Protocol):
    """One applied adapter as the renderer and the session drive it, whatever its kind applied it with."""

    scale_in_call: bool  # the pipeline's scale keyword carries its scale (peft's layers); else its own modules take it

    def active(self, scale: float) -> AbstractContextManager:
        """Only this adapter on the base, at `scale`, inside the block."""

    def watch(self, name: str, layer: torch.nn.Module, mark: Callable[[], None]):
        """A removable hook calling `mark` when the adapter's own computation runs in `name` ("component.module")."""

    def remove(self) -> None:
        """The adapter off the base: nothing of it stays for the next one."""


@dataclass
class Application:
    """What one adapter file asked for and what is now in the pipeline."""

    adapter_name: str
    format: str
    family: str
    tensors: int  # LoRA weight tensors in the file (alpha scalars not counted)
    tensors_applied: int  # those found in their module with their values
    lora_params: int  # LoRA parameters injected
    rank: int | None
    alpha: float | None
    scale: float | None  # alpha / rank as applied (the most common value when it varies)
    scales: dict[str, float] = field(default_factory=dict)  # per module, as applied
    unmatched: list[tuple[str, str, list[str]]] = field(default_factory=list)  # file key, module, nearest modules
    shape_mismatches: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # file key, expected, found
    refused: list[tuple[str, str]] = field(default_factory=list)  # file key, why its module could not be built
    value_mismatches: list[str] = field(default_factory=list)  # file keys whose values did not land
    scale_mismatches: list[tuple[str, float, float]] = field(default_factory=list)  # module, declared, applied
    nonfinite: list[str] = field(default_factory=list)  # file keys holding NaN or Inf
    zero_up: list[str] = field(default_factory=list)  # up (B) matrices that are all zero
    up_tensors: int = 0
    lora_layers: dict[str, torch.nn.Module] = field(default_factory=dict)  # "component.module" -> peft / LyCORIS layer
    layer_params: dict[str, int] = field(
        default_factory=dict
    )  # "component.module" -> the adapter's own parameters there
    shapes: dict[str, list[int]] = field(default_factory=dict)  # file key -> shape
    dtypes: list[str] = field(default_factory=list)
    factors: dict[str, tuple] = field(default_factory=dict)  # "component.module" -> (down, up, declared scale)
    lycoris_factors: dict[str, LycorisFactors] = field(default_factory=dict)  # LyCORIS algos but LoCon
    ranks: list[int] = field(default_factory=list)  # distinct ranks in the file
    alphas: list[float] = field(default_factory=list)  # distinct alphas in the file
    dora_modules: int = 0  # modules with a DoRA magnitude vector
    kind: str = "LoRA"  # LoRA | DoRA | LyCORIS algos as the field names them, "+"-joined (LoKr, LoCon+LoHa, ...)
    architecture: str = UNET  # the base's denoiser architecture, which names its blocks
    replaced: ReplacedModules | None = None  # PEFT `modules_to_save`: whole modules, in while the adapter renders
    # Where a conversion injected more than the file holds (a fused module's down matrix copied into each layer it
    # fills): per "component.first layer" of each file module, the parameters the file holds for it.
    file_module_params: dict[str, int] = field(default_factory=dict)
    on_base: OnBase | None = None  # how its kind switches it on while it renders and takes it off

    def record(self) -> dict:
        """The adapter's entry in results.json."""
        details = {
            "components": sorted({name.partition(".")[0] for name in self.lora_layers}),
            "target_modules": len(self.lora_layers),
            "target_kinds": sorted({_module_kind(name) for name in self.lora_layers}),
            "ranks": self.ranks,
            "alphas": self.alphas,
            "dtypes": self.dtypes,
            "shapes": self.shapes,
        }
        if len(set(self.scales.values())) > 1:
            details["scales"] = self.scales
        if self.replaced is not None:
            details["replaced_modules"] = sorted(self.replaced.modules)
        return {
            "format": self.format,
            "kind": self.kind,
            "family": self.family,
            "rank": self.rank,
            "alpha": self.alpha,
            "scale": self.scale,
            "tensors": self.tensors,
            "tensors_applied": self.tensors_applied,
            "lora_params": self.lora_params,
            "details": details,
        }


def file_defects(path, application: Application) -> list[str]:
    """What is wrong with the file itself: each fails every check of the adapter, whatever they measure."""
    defects = []
    if application.tensors_applied != application.tensors:
        why = describe_unmatched(application.unmatched, application.shape_mismatches, application.refused)
        if not (application.unmatched or application.shape_mismatches or application.refused):
            shown = ", ".join(application.value_mismatches[:3])
            why = f"{len(application.value_mismatches)} did not land with their values, first {shown}; the loader dropped or changed them"
        defects.append(f"{path}: {application.tensors_applied} of {application.tensors} LoRA tensors applied; {why}")
    if application.nonfinite:
        defects.append(
            f"{path}: {len(application.nonfinite)} tensors hold NaN or Inf, first {application.nonfinite[0]}; export the adapter again from a healthy checkpoint"
        )
    # DoRA's magnitudes rescale the weights even with every B zero; modules replaced whole change them anyway.
    inert = application.up_tensors and len(application.zero_up) == application.up_tensors
    if inert and not application.dora_modules and application.replaced is None:
        defects.append(
            f"{path}: every up matrix (lora_B / lora_up) is all zero, so the adapter can change nothing; "
            "export the trained weights, not the initial ones"
        )
    return defects


DROPPED = "nothing: the base's loader applies none of it"  # where a key the loader drops is said to land


def describe_unmatched(unmatched, shape_mismatches, refused=(), shown: int = 3) -> str:
    parts = []
    if unmatched:
        first_per_module: dict[str, tuple[str, list[str]]] = {}  # a module's other tensors would say the same
        for key, module, nearest in unmatched:
            first_per_module.setdefault(module, (key, nearest))
        listed = "; ".join(
            f"{key} -> {module}" + (f" (nearest: {', '.join(nearest)})" if nearest else "")
            for module, (key, nearest) in list(first_per_module.items())[:shown]
        )
        parts.append(f"{len(unmatched)} keys match no module, first {listed}")
    if shape_mismatches:
        listed = "; ".join(f"{key}: base needs {want}, file has {got}" for key, want, got in shape_mismatches[:shown])
        parts.append(f"{len(shape_mismatches)} shapes disagree, first {listed}")
    if refused:
        key, why = refused[0]
        parts.append(f"{len(refused)} tensors whose module LyCORIS could not build, first {key}: {why}")
    if unmatched and all(module == DROPPED for _, module, _ in unmatched) and not (shape_mismatches or refused):
        return "; ".join(parts) + (
            "; the base's own loader drops them (diffusers logs them and goes on), and lora-harness will not check a "
            "partial load: export the adapter without them"
        )
    return "; ".join(parts) + "; check that the adapter was trained for this base"


def _module_kind(name: str) -> str:
    """'unet.….attn1.to_out.0' -> 'to_out.0'; 'unet.….attn1.to_q' -> 'to_q'."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]
