"""LoKr files that the base's pipeline class converts itself (ai-toolkit's Z-Image `diffusion_model.<module>.lokr_w1`,
SimpleTuner's bare module paths on Flux.2), loaded by diffusers into peft's LoKr layers and traced back to the file
(`traced_kronecker`): every factor as the file stores it, but the one the conversion bakes alpha / rank into, whose
factor is measured."""

from __future__ import annotations

import torch

from lora_harness.bases.families import Family, Signature
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.layouts import DIFFUSERS, DIFFUSION_MODEL, DIFFUSION_MODEL_PREFIX, MODULE_PATHS
from lora_harness.loading.lycoris_modules import LycorisFactors, declared_rank
from lora_harness.loading.normalized import NormalizedAdapter, Target
from lora_harness.loading.peft_injection import apply_normalized, find_module
from lora_harness.loading.proof import Proven, keys_by_module, landed_tensor, rewrite_tolerance, same_values
from lora_harness.loading.traced_conversion import proportional, traced_by_loader
from lora_harness.loading.traced_kronecker import BAKED, FUSED_QKV, is_kronecker, kronecker_shape, trace_kronecker

PREFIXES = {DIFFUSION_MODEL_PREFIX: DIFFUSION_MODEL, "transformer.": DIFFUSERS}


def _claims(adapter: AdapterFile, family: Family) -> bool:
    return family.converts_lokr and is_kronecker(adapter.tensors)


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    refuse_damaged(adapter)
    normalized = normalize(adapter, pipeline)
    return apply_normalized(
        pipeline, base_signature, adapter, normalized, adapter_name, _prove_kronecker, _kronecker_mismatches
    )


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    keys = list(adapter.tensors)
    layout = next(
        (layout for prefix, layout in PREFIXES.items() if all(k.startswith(prefix) for k in keys)), MODULE_PATHS
    )
    traced = traced_by_loader(adapter, pipeline, "LoKr file", trace_kronecker, unused_alpha=True)
    for layer in traced.layers.values():
        component, path = layer.split(".", 1)
        if path.endswith(FUSED_QKV) and path not in dict(getattr(pipeline, component).named_modules()):
            raise AdapterLoadError(
                f"{adapter.weights_path}: a LoKr on the fused q, k, v projection BFL's model has (`{path}`), as "
                "ai-toolkit writes Flux.2's; diffusers loads it only by fusing the base's q, k and v projections into "
                "one (`fuse_qkv_projections`), which changes the base under test and every adapter checked after it: "
                "lora-harness does not apply it"
            )
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    targets, file_keys, expected, ranks, alphas = {}, {}, {}, {}, {}
    for module, layer in traced.layers.items():
        component, path = layer.split(".", 1)
        roles = traced.roles[module]
        for role, key in roles.items():
            state_dicts.setdefault(component, {})[f"{path}.{role}"] = traced.converted[f"{layer}.{role}"]
            targets[key] = Target(component, path, role)
            file_keys[(component, f"{path}.{role}")] = key
        _, rank = declared_rank("LoKr", {role: adapter.tensors[key] for role, key in roles.items()})
        alpha = float(adapter.tensors[f"{module}.alpha"]) if f"{module}.alpha" in adapter.tensors else 0.0
        # Both factors full: LoKr applies them at 1, whatever the alpha (ai-toolkit stores an infinite one).
        expected[layer], ranks[layer], alphas[layer] = (
            (1.0, None, None) if rank is None else ((alpha or rank) / rank, rank, alpha or rank)
        )
    return NormalizedAdapter(
        format=layout,
        kind="LoKr",
        state_dicts=state_dicts,
        file_keys=file_keys,
        targets=targets,
        expected_scales=expected,
        ranks={name: rank for name, rank in ranks.items() if rank is not None},
        alphas={name: alpha for name, alpha in alphas.items() if alpha is not None},
        tensors=dict(adapter.tensors),
        untraced=traced.dropped,
    )


def _kronecker_mismatches(pipeline, normalized: NormalizedAdapter, accepted: set[str]) -> list[tuple]:
    """A LoKr module's kron(w1, w2) must have its linear layer's shape; every factor of one that does not is refused."""
    mismatches = []
    for name, by_role in keys_by_module(normalized).items():
        component, path = name.split(".", 1)
        layer = find_module(getattr(pipeline, component, None), path)
        keys = list(by_role.values())
        if layer is None or not set(keys) <= accepted:
            continue
        wanted = (layer.out_features, layer.in_features) if isinstance(layer, torch.nn.Linear) else None
        shape = kronecker_shape({role: normalized.tensors[key] for role, key in by_role.items()})
        if shape != wanted:
            mismatches += [(key, wanted, shape) for key in keys]
    return mismatches


def _prove_kronecker(
    adapter: AdapterFile, normalized: NormalizedAdapter, layers: dict, adapter_name: str, refused
) -> Proven:
    """LoKr factors in peft's LoKr layers: each as the file stores it, but w1 (w1_a), into which the conversion bakes
    alpha / rank, in proportion; that proportion times the layer's own scaling is the scale applied. weight_health
    reads each module's factors as the file stores them, at the scale it declares."""
    applied, mismatches, measured, factors = 0, [], {}, {}
    for name, keys in keys_by_module(normalized).items():
        layer = layers.get(name)
        roles = {role: normalized.tensors[key] for role, key in keys.items()}
        factor = 1.0
        for role, in_file in roles.items():
            landed = landed_tensor(layer, role, adapter_name) if layer is not None else None
            if landed is not None and role in BAKED and proportional(landed, in_file):
                wanted = in_file.detach().double()
                factor = float((landed.detach().double() * wanted).sum() / (wanted * wanted).sum().clamp_min(1e-300))
                applied += 1
            elif landed is not None and role not in BAKED and same_values(landed, in_file):
                applied += 1
            else:
                mismatches.append(keys[role])
        if layer is not None:
            measured[name] = factor * float(layer.scaling[adapter_name])
            factors[name] = LycorisFactors(roles, normalized.expected_scales.get(name, 1.0), layer, "LoKr")
    tolerance = rewrite_tolerance(normalized, {p.dtype for layer in layers.values() for p in layer.parameters()})
    return Proven(applied, mismatches, measured, tolerance, factors)


KIND = AdapterKind("LoKr the base's pipeline converts", _claims, apply)
