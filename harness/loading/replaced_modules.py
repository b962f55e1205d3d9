"""PEFT's `modules_to_save`: whole modules of the base saved trained, beside the LoRA, which replace the base's.

diffusers' loaders have no place for them and peft's `ModulesToSaveWrapper` is not switched by diffusers'
`set_adapters` / `disable_lora`, so the harness keeps each replacement off the base (a copy holding the file's
values) and points the base module's forward at it only while its adapter renders, as LyCORIS's networks are.
A replacement has no scale: it is in at any non-zero LoRA scale and out at 0, where the adapter is off.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass, field

import torch

from lora_harness.bases.parameter_names import is_tuner_parameter
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.forward_swap import forwards_swapped, watch_forward

LORA_METADATA_KEY = "lora_adapter_metadata"  # where diffusers' save_lora_weights keeps each component's LoraConfig


@dataclass
class ReplacedModules:
    """Per "component.module": the base's module and the copy holding the file's values, and which file key each
    of the copy's parameters came from."""

    modules: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = field(default_factory=dict)
    file_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # "component.module" -> parameter -> file key

    def active(self, scale: float):
        return forwards_swapped(list(self.modules.values()) if scale != 0 else [])

    def watch(self, name: str, mark):
        """A forward hook on the base's module that calls `mark` when it ran the replacement."""
        original, replacement = self.modules[name]
        return watch_forward(original, replacement, mark)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for _, replacement in self.modules.values() for p in replacement.parameters())


def replacement(original: torch.nn.Module, saved: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `original` (which no adapter layer wraps) holding `saved`, its parameters by name as peft saved
    them, in the base's dtype and on its device."""
    twin = copy.deepcopy(original).requires_grad_(False)
    held = dict(twin.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            held[name].copy_(tensor.to(held[name].dtype))
    return twin


def build_replacements(pipeline, adapter: AdapterFile, saved: dict[str, dict[str, str]], lora_modules: set[str]):
    """The replacements for `saved` ("component.module" -> parameter -> file key), with the file keys that match
    no module or parameter of the base (file key, where, nearest) and those whose shapes disagree."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    built, unmatched, shape_mismatches = ReplacedModules(), [], []
    for name, keys in saved.items():
        inside = next((m for m in sorted(lora_modules) if m.startswith(f"{name}.")), None)
        if inside is not None:
            raise AdapterLoadError(
                f"{adapter.weights_path}: its LoRA adapts {inside}, inside {name}, which its `modules_to_save` "
                "replaces whole; lora-harness does not apply a LoRA inside a replaced module: train with the two apart"
            )
        component_name, _, path = name.partition(".")
        component = getattr(pipeline, component_name, None)
        try:
            original = component.get_submodule(path) if component is not None else None
        except AttributeError:
            original = None
        if original is None:
            names = [n for n, _ in component.named_modules()] if component is not None else []
            nearest = difflib.get_close_matches(path, names, n=3, cutoff=0.6)
            unmatched += [(key, name, nearest) for key in keys.values()]
            continue
        if any(isinstance(m, BaseTunerLayer) for m in original.modules()):
            raise AdapterLoadError(
                f"{adapter.weights_path}: `modules_to_save` replaces {name}, a layer of which another adapter of the "
                "session adapts; check this adapter alone (-k ADAPTER)"
            )
        held = {n: tuple(p.shape) for n, p in original.named_parameters()}
        missing = sorted(set(held) - set(keys))
        foreign = [(key, f"{name}.{parameter}", []) for parameter, key in keys.items() if parameter not in held]
        wrong = [
            (key, held[parameter], tuple(adapter.tensors[key].shape))
            for parameter, key in keys.items()
            if parameter in held and tuple(adapter.tensors[key].shape) != held[parameter]
        ]
        unmatched += foreign
        shape_mismatches += wrong
        if missing and not (foreign or wrong):
            raise AdapterLoadError(
                f"{adapter.weights_path}: `modules_to_save` {name} lacks {len(missing)} of the module's parameters, "
                f"first {missing[0]}; peft saves every one: the file is incomplete, export it again"
            )
        if not (missing or foreign or wrong):
            built.modules[name] = (original, replacement(original, {p: adapter.tensors[k] for p, k in keys.items()}))
            built.file_keys[name] = keys
    return built, unmatched, shape_mismatches


def split_replaced(prefixed: dict, lora_configs: dict, file_key_of: dict) -> tuple[dict, dict[str, dict[str, str]]]:
    """Take the modules a LoraConfig's `modules_to_save` names out of what diffusers' loaders get: they have no
    place for whole modules, and given the option peft would wrap each in a copy of the base's. peft names them as
    it matches them: the module's own name or a dotted suffix of it."""
    names = {component: config.pop("modules_to_save", None) or [] for component, config in lora_configs.items()}
    kept, replaced = {}, {}
    for key, tensor in prefixed.items():
        component, _, parameter = key.partition(".")
        module = None if is_tuner_parameter(parameter) else saved_module(parameter, names.get(component, []))
        if module is None:
            kept[key] = tensor
        else:
            saved = replaced.setdefault(f"{component}.{module}", {})
            saved[parameter.removeprefix(f"{module}.")] = file_key_of[id(tensor)]
    return kept, replaced


def saved_module_keys(adapter: AdapterFile) -> set[str]:
    """The file keys of modules a LoraConfig's `modules_to_save` names (the folder's config, or the file's
    metadata for any component)."""
    configs = [adapter.adapter_config or {}]
    raw = adapter.file_metadata.get(LORA_METADATA_KEY)
    try:
        metadata = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        metadata = {}  # said where the kind reads it for its LoraConfig
    if isinstance(metadata, dict):
        configs.append({k.rpartition(".")[2]: v for k, v in metadata.items()})
    names = [name for config in configs for name in (config.get("modules_to_save") or [])]
    return {k for k in adapter.tensors if not is_tuner_parameter(k) and saved_module(k, names) is not None}


def saved_module(parameter: str, names: list[str]) -> str | None:
    parts = parameter.split(".")
    for end in range(1, len(parts)):
        module = ".".join(parts[:end])
        if any(module == name or module.endswith(f".{name}") for name in names):
            return module
    return None
