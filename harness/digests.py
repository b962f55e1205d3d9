"""Bitwise digests of a pipeline's base parameters, by their names before any LoRA was injected."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import torch

from .adapter_layout import is_tuner_parameter, unwrapped_name

def base_parameters(pipeline) -> dict[str, torch.Tensor]:
    """Every base parameter of the pipeline, keyed `component.name` as it was before injection.

    peft moves a wrapped weight to `<module>.base_layer.weight` (nested once per adapter kind); the adapters'
    own parameters are left out.
    """
    parameters = {}
    for component_name, component in pipeline.components.items():  # every model the pipeline holds (SD3: three text encoders)
        if not isinstance(component, torch.nn.Module):
            continue
        for name, parameter in component.named_parameters():
            if is_tuner_parameter(name):
                continue
            parameters[f"{component_name}.{unwrapped_name(name)}"] = parameter
    return parameters


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest_parameters(pipeline) -> dict[str, str]:
    """name -> blake2b of the parameter's bytes. hashlib releases the GIL, so two threads use two cores."""
    parameters = base_parameters(pipeline)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(parameters, pool.map(_digest, parameters.values())))


def fingerprint(digests: dict[str, str]) -> str:
    """One short hash for the whole set of parameters."""
    combined = hashlib.sha256("".join(f"{name}={value};" for name, value in sorted(digests.items())).encode())
    return combined.hexdigest()[:16]


def changed_parameters(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Names whose bytes differ, or that appeared or vanished."""
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
