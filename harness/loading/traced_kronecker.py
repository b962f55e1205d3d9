"""LoKr files that the base's pipeline class converts itself (ai-toolkit's Z-Image `diffusion_model.<module>.lokr_w1`,
SimpleTuner's bare module paths on Flux.2), which diffusers loads into peft's LoKr layers.

The class's own `lora_state_dict` renames the modules and bakes alpha / rank into w1 (or w1_a) where a factor is
rank-decomposed; it passes every other factor on unchanged. Each converted layer is traced to the file module whose
unchanged factors it holds and whose w1 it holds in proportion: the proof then measures the factor baked in, so a
baked alpha is proven like a declared one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_harness.loading.traced_conversion import proportional

KRONECKER = ".lokr_"  # a LoKr factor's key: `<module>.lokr_w1`, `<module>.lokr_w2_a`, ...
BAKED = ("lokr_w1", "lokr_w1_a")  # where the conversion bakes alpha / rank
FUSED_QKV = ("to_qkv", "to_added_qkv")  # projections diffusers fuses in the base to load a LoKr on BFL's fused qkv


@dataclass
class TracedKronecker:
    converted: dict[str, torch.Tensor]  # "component.layer.lokr_w1" -> tensor, as the class's loader takes them
    layers: dict[str, str]  # file module -> "component.layer"
    roles: dict[str, dict[str, str]]  # file module -> role ("lokr_w1") -> file key
    dropped: list[str]  # file keys no converted layer came from
    invented: list[str]  # converted layers traced to no file module


def is_kronecker(keys) -> bool:
    return any(KRONECKER in key for key in keys)


def trace_kronecker(tensors, pipeline) -> TracedKronecker:
    converted = type(pipeline).lora_state_dict({key: tensor.clone() for key, tensor in tensors.items()})
    if isinstance(converted, tuple):  # (state dict, network alphas) for the classes that return both
        converted = converted[0]
    files = _file_modules(tensors)
    unclaimed = dict(files)
    layers, invented = {}, []
    for layer, roles in _file_modules(converted).items():
        found = next(
            (module for module, keys in unclaimed.items() if _holds(roles, keys, converted, tensors)),
            None,
        )
        if found is None:
            invented.append(layer)
            continue
        del unclaimed[found]
        layers[found] = layer
    dropped = [key for keys in unclaimed.values() for key in keys.values()]
    dropped += [key for key in tensors if KRONECKER not in key and not key.endswith(".alpha")]
    return TracedKronecker(converted, layers, files, dropped, invented)


def kronecker_shape(roles: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(out, in) of kron(w1, w2) for a linear layer, from the factors as stored (full or decomposed)."""
    w1 = roles["lokr_w1"].shape if "lokr_w1" in roles else (roles["lokr_w1_a"].shape[0], roles["lokr_w1_b"].shape[1])
    w2 = roles["lokr_w2"].shape if "lokr_w2" in roles else (roles["lokr_w2_a"].shape[0], roles["lokr_w2_b"].shape[1])
    return w1[0] * w2[0], w1[1] * w2[1]


def _holds(converted_roles: dict[str, str], file_roles: dict[str, str], converted, tensors) -> bool:
    if set(converted_roles) != set(file_roles):
        return False
    return all(
        proportional(converted[converted_roles[role]], tensors[key])
        if role in BAKED
        else torch.equal(converted[converted_roles[role]], tensors[key])
        for role, key in file_roles.items()
    )


def _file_modules(tensors) -> dict[str, dict[str, str]]:
    """Module -> role -> key, for the LoKr factors among `tensors` (alphas left out)."""
    modules: dict[str, dict[str, str]] = {}
    for key in tensors:
        if KRONECKER in key:
            module, _, role = key.rpartition(".")
            modules.setdefault(module, {})[role] = key
    return modules
