"""The proof helpers every kind shares: a file tensor found with its values where it was traced to, or, where a
conversion rewrote the values, each file module's update found in the layers it fills, with the scale it applies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from lora_harness.loading.adapter_file import AdapterFile
from lora_harness.loading.lycoris_modules import LycorisFactors
from lora_harness.loading.normalized import LORA_BIAS, NormalizedAdapter, Target


@dataclass
class Proven:
    """What a kind's proof found in the layers its adapter was injected into."""

    applied: int  # file tensors found with their values (up to a measured scale where the conversion rewrote them)
    mismatches: list[str]  # file keys whose values did not land
    measured: dict[str, float] = field(default_factory=dict)  # per layer, the scale measured from the values
    tolerance: float = 1e-5  # how near the applied scale must be to the declared one
    lycoris_factors: dict[str, LycorisFactors] = field(default_factory=dict)  # weight_health's, where not LoRA's


def by_tensors(adapter: AdapterFile, normalized: NormalizedAdapter, layers: dict, adapter_name: str, refused) -> Proven:
    """Files whose tensors land unchanged: each one, with its values, in its layer."""
    return Proven(*prove_tensors(adapter, normalized.targets, layers, adapter_name))


def by_updates(adapter: AdapterFile, normalized: NormalizedAdapter, layers: dict, adapter_name: str, refused) -> Proven:
    """Files whose tensors the conversion rewrote (`flux_modules`): each module's update in the layers it fills, at
    a measured scale; a bias difference lands unchanged and is proven by value."""
    tolerance = rewrite_tolerance(normalized, {layer.lora_A[adapter_name].weight.dtype for layer in layers.values()})
    applied, mismatches, measured = prove_updates(normalized, layers, adapter_name, refused, tolerance)
    biases = {key: target for key, target in normalized.targets.items() if target.role == LORA_BIAS}
    bias_applied, bias_mismatches = prove_tensors(adapter, biases, layers, adapter_name)
    return Proven(applied + bias_applied, mismatches + bias_mismatches, measured, tolerance)


def tensor_facts(adapter: AdapterFile, keys: list[str]) -> dict:
    """What the Application says of the file's own weight tensors: their count, shapes, dtypes, and which hold NaN
    or Inf (integer flags such as (IA)³'s `on_input` hold neither)."""
    tensors = adapter.tensors
    return {
        "tensors": len(keys),
        "shapes": {key: list(tensors[key].shape) for key in keys},
        "dtypes": sorted({str(tensors[key].dtype).removeprefix("torch.") for key in keys}),
        "nonfinite": [key for key in keys if tensors[key].is_floating_point() and not tensors[key].isfinite().all()],
    }


def same_values(landed: torch.Tensor, in_file: torch.Tensor) -> bool:
    """The file's values as the layer's dtype holds them (injected layers follow the base's, `--dtype`: a float32
    file on a float16 base lands rounded, once), up to a 1x1-conv vs linear reshape; NaN counts as equal to NaN."""
    if landed.numel() != in_file.numel():
        return False
    landed = landed.detach().to("cpu").reshape(in_file.shape)
    in_file = in_file.to(landed.dtype)
    return bool(torch.equal(landed, in_file) or torch.allclose(landed, in_file, rtol=0, atol=0, equal_nan=True))


def most_common(values):
    counted = Counter(values).most_common(1)
    return counted[0][0] if counted else None


def prove_tensors(adapter, targets: dict[str, Target], layers: dict, adapter_name: str) -> tuple[int, list[str]]:
    """Each file tensor found, with its values, in the layer it was traced to."""
    value_mismatches = []
    applied = 0
    for key, target in targets.items():
        layer = layers.get(target.qualified_module)
        if layer is None:
            continue
        landed = landed_tensor(layer, target.role, adapter_name)  # a loader that drops DoRA leaves no magnitude
        if landed is not None and same_values(landed, adapter.tensors[key]):
            applied += 1
        else:
            value_mismatches.append(key)
    return applied, value_mismatches


def landed_tensor(layer, role: str, adapter_name: str) -> torch.Tensor | None:
    """The tensor `layer` holds for `role` of `adapter_name`: a LoRA matrix's weight, B's bias, a DoRA magnitude."""
    if role == LORA_BIAS:
        b = layer.lora_B[adapter_name] if adapter_name in layer.lora_B else None
        return None if b is None else b.bias
    held = getattr(layer, role, {})
    if adapter_name not in held:
        return None
    return getattr(held[adapter_name], "weight", held[adapter_name])  # a magnitude is a parameter of its own


def prove_updates(
    normalized: NormalizedAdapter, layers: dict, adapter_name: str, skipped: set[str], tolerance: float
) -> tuple[int, list[str], dict[str, float]]:
    """For files whose tensors the conversion rewrote: each module's update up · down, cut into its layers' rows,
    against what each layer adds (B · A · scaling). The scale applied is measured as the factor between the two,
    so a baked-in alpha is proven like a declared one. A module counts as applied when every layer it fills
    holds its update up to that factor. Modules with a key in `skipped` were refused before injection.

    Only r × r products are formed (`_inner`): at Flux.1's widths one update is 21504 × 3072."""
    applied, value_mismatches, measured = 0, [], {}
    for module in normalized.flux_modules.values():
        if {module.down, module.up} & skipped:
            continue
        names = [f"{module.component}.{layer}" for layer in module.layers]
        landed = [layers.get(name) for name in names]
        if any(layer is None or adapter_name not in layer.lora_A for layer in landed):
            value_mismatches += [module.down, module.up]
            continue
        down = _flat(normalized.tensors[module.down])
        ups = module.split(_flat(normalized.tensors[module.up]), [layer.out_features for layer in landed])
        holds = True
        for name, layer, up in zip(names, landed, ups):
            added_up = _flat(layer.lora_B[adapter_name].weight) * layer.scaling[adapter_name]
            added_down = _flat(layer.lora_A[adapter_name].weight)
            wanted_norm2 = _inner(up, down, up, down)  # ‖U·D‖²
            added_norm2 = _inner(added_up, added_down, added_up, added_down)  # ‖B·A‖²
            if wanted_norm2 == 0:  # an all-zero update looks the same at every scale
                measured[name] = module.scale
                holds = holds and added_norm2 == 0
                continue
            crossed = _inner(added_up, added_down, up, down)
            scale = crossed / wanted_norm2  # the least-squares factor: B·A ≈ scale · U·D
            measured[name] = scale
            residual = max(added_norm2 - crossed * scale, 0.0) ** 0.5  # ‖B·A − scale · U·D‖
            holds = holds and scale != 0 and residual <= 2 * tolerance * abs(scale) * wanted_norm2**0.5
        if holds:
            applied += 2
        else:
            value_mismatches += [module.down, module.up]
    return applied, value_mismatches, measured


def _flat(factor: torch.Tensor) -> torch.Tensor:
    """A factor as a 2-D float64 matrix on the CPU, wherever the pipeline runs."""
    return factor.detach().to("cpu", torch.float64).reshape(factor.shape[0], -1)


def _inner(up1: torch.Tensor, down1: torch.Tensor, up2: torch.Tensor, down2: torch.Tensor) -> float:
    """⟨up1 · down1, up2 · down2⟩ (Frobenius) = Σ (up1ᵀ up2) ∘ (down1 down2ᵀ), from r1 × r2 matrices."""
    return float(((up1.T @ up2) * (down1 @ down2.T)).sum())


def rewrite_tolerance(normalized: NormalizedAdapter, layer_dtypes: set[torch.dtype]) -> float:
    """Rewritten values are rounded to the file's dtype before they land (bf16: to within 0.4% each), and so is the
    scale diffusers computes from an alpha stored in it; they land rounded to the layers' dtype (the base's, as
    `--dtype` chose): the applied scale is trusted to one eps of the coarsest of them (bf16: 0.8%)."""
    dtypes = {normalized.tensors[k].dtype for k in normalized.tensor_keys} | layer_dtypes
    return max(1e-5, max(torch.finfo(dtype).eps for dtype in dtypes))


def keys_by_module(normalized: NormalizedAdapter) -> dict[str, dict[str, str]]:
    """The file's keys per "component.module", by role (lora_A, lokr_w1, ...)."""
    modules: dict[str, dict[str, str]] = {}
    for key, target in normalized.targets.items():
        modules.setdefault(target.qualified_module, {})[target.role] = key
    return modules


def roles_by_module(normalized: NormalizedAdapter) -> dict[str, dict[str, torch.Tensor]]:
    """The file's tensors per "component.module", by role."""
    return {
        module: {role: normalized.tensors[key] for role, key in keys.items()}
        for module, keys in keys_by_module(normalized).items()
    }
