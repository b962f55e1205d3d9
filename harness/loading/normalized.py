"""What every kind that injects through diffusers' loaders brings its file to: per component, the state dict those
loaders take (peft keys), with a trace from each tensor back to the file key it came from, so the proof of
application can name file keys.

Where a conversion only renames (diffusers' and peft's key conversions rename keys, they do not copy tensors), the
trace follows each tensor by identity (`from_prefixed`). Where it rewrites values (Flux's community layouts, the
trainers' layouts a pipeline converts itself), each module of the file is traced to the layers its update fills,
and the proof compares updates there (`from_modules`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from lora_harness.bases.families import is_denoiser
from lora_harness.bases.parameter_names import unwrapped_name
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.flux_layouts import FluxModule
from lora_harness.loading.replaced_modules import split_replaced

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
MAGNITUDE = "lora_magnitude_vector"  # DoRA's per-output-channel magnitude, next to A and B
LORA_BIAS = "lora_B.bias"  # peft's `lora_bias=True`: a bias on B, scaled with it
ROLES = (LORA_BIAS, "lora_A", "lora_B", MAGNITUDE)  # a bias is also under lora_B: matched first
WEIGHT_DIFFERENCE = ".diff"  # a weight's full difference (LyCORIS's `full`, a norm's in Wan's distillation LoRAs)


@dataclass(frozen=True)
class Target:
    """Where a file tensor must land: `component.get_submodule(module)`'s `role` layer."""

    component: str
    module: str
    role: str  # lora_A | lora_B | lora_magnitude_vector

    @property
    def qualified_module(self) -> str:
        return f"{self.component}.{self.module}"


@dataclass
class NormalizedAdapter:
    format: str
    kind: str  # LoRA | DoRA
    # per component, the state dict in the layout diffusers' per-component loaders take (peft keys, no prefix)
    state_dicts: dict[str, dict[str, torch.Tensor]]
    file_keys: dict[tuple[str, str], str]  # (component, peft key) -> the file key its tensor came from
    targets: dict[str, Target]  # file key -> target, for every LoRA weight tensor that a conversion kept
    expected_scales: dict[str, float]  # "component.module" -> alpha / rank, as the file declares it
    ranks: dict[str, int]
    alphas: dict[str, float]
    tensors: dict[str, torch.Tensor]  # the file's tensors, by file key
    lora_configs: dict[str, dict] = field(default_factory=dict)  # per component, LoraConfig kwargs the file carries
    network_alphas: dict[str, float] | None = None  # Kohya alphas, keyed as diffusers' conversion keys them
    untraced: list[str] = field(
        default_factory=list
    )  # file keys that are neither LoRA weights that landed in a state dict nor alphas
    # PEFT's `modules_to_save`: per "component.module" replaced whole, its parameters by name -> their file keys
    replaced: dict[str, dict[str, str]] = field(default_factory=dict)
    # Flux's community layouts, whose tensors diffusers rewrites: per "component.module" of each file module's first
    # layer, what the file's module means (the proof compares updates there, not tensors)
    flux_modules: dict[str, FluxModule] = field(default_factory=dict)

    @property
    def tensor_keys(self) -> list[str]:
        """The file's LoRA weight tensors (alphas not counted)."""
        return [key for key in self.tensors if not key.endswith(".alpha")]


def from_prefixed(
    adapter: AdapterFile,
    layout: str,
    tensors: dict[str, torch.Tensor],
    prefixed: dict[str, torch.Tensor],
    pipeline,
    lora_configs: dict[str, dict],
    file_alphas: dict[str, float] | None = None,
    network_alphas: dict[str, float] | None = None,
) -> NormalizedAdapter:
    """The normalized adapter of a file whose tensors (`tensors`, read once: each read of a file tensor is a new
    object) only a renaming brought to `prefixed` ("component.peft key"): traced by identity. Its scale per module:
    alpha / rank, alpha from `file_alphas` (Kohya's, by file key of the down matrix), else the component's
    LoraConfig (`lora_configs`), else the rank (scale 1)."""
    file_key_of = {id(tensor): key for key, tensor in tensors.items()}
    prefixed, replaced = split_replaced(prefixed, lora_configs, file_key_of)
    state_dicts = {c: to_peft_keys(c, prefixed, pipeline) for c in COMPONENTS}
    state_dicts = {c: sd for c, sd in state_dicts.items() if sd}
    _flatten_kohya_magnitudes(adapter, state_dicts, file_key_of)
    targets: dict[str, Target] = {}
    file_keys: dict[tuple[str, str], str] = {}
    for component, state_dict in state_dicts.items():
        for peft_key, tensor in state_dict.items():
            for role in ROLES:
                if has_role(peft_key, role) and id(tensor) in file_key_of:
                    module = peft_key.split(f".{role}")[0]
                    targets[file_key_of[id(tensor)]] = Target(component, module, role)
                    file_keys[(component, peft_key)] = file_key_of[id(tensor)]
                    break
    replaced_keys = {key for saved in replaced.values() for key in saved.values()}
    untraced = [k for k in tensors if not k.endswith(".alpha") and k not in targets and k not in replaced_keys]

    ranks, alphas, expected = {}, {}, {}
    for key, target in targets.items():
        if target.role != "lora_B":
            continue
        name = target.qualified_module
        ranks[name] = int(tensors[key].shape[1])
    for key, target in targets.items():
        if target.role != "lora_A" or target.qualified_module not in ranks:
            continue
        name = target.qualified_module
        rank = ranks[name]
        config = lora_configs.get(target.component)
        if file_alphas is not None:
            alpha = file_alphas.get(key, float(rank))  # Kohya: no alpha means alpha = rank
        elif config is not None:
            alpha = float(
                pattern_value(config.get("alpha_pattern") or {}, target.module, config.get("lora_alpha", rank))
            )
        else:
            alpha = float(rank)  # diffusers and peft convention without metadata: scale 1
        alphas[name] = alpha
        use_rslora = bool(config and config.get("use_rslora"))
        expected[name] = alpha / math.sqrt(rank) if use_rslora else alpha / rank

    magnitudes = any(target.role == MAGNITUDE for target in targets.values())
    return NormalizedAdapter(
        format=layout,
        kind="DoRA" if magnitudes else "LoRA",
        state_dicts=state_dicts,
        file_keys=file_keys,
        lora_configs=lora_configs,
        network_alphas=network_alphas,
        targets=targets,
        untraced=untraced,
        replaced=replaced,
        expected_scales=expected,
        ranks=ranks,
        alphas=alphas,
        tensors=tensors,
    )


def from_modules(
    adapter: AdapterFile,
    layout: str,
    modules: dict[str, FluxModule],
    converted: dict,
    pipeline,
    untraced=(),
    biases: dict[str, tuple[str, str]] | None = None,
) -> NormalizedAdapter:
    """The normalized adapter of a file whose tensors a conversion rewrote: each file module's targets are the
    layers its update fills, and the proof compares updates (`flux_modules`); a bias difference lands unchanged, as
    its layer's LoRA bias, and is proven by value."""
    state_dicts = {c: to_peft_keys(c, converted, pipeline) for c in COMPONENTS}
    targets, file_keys, by_first_layer, expected, ranks, alphas = {}, {}, {}, {}, {}, {}
    for module in modules.values():
        first = Target(module.component, module.layers[0], "lora_A")
        targets[module.down] = first
        targets[module.up] = dataclasses.replace(first, role="lora_B")
        by_first_layer[first.qualified_module] = module
        rank = int(adapter.tensors[module.down].shape[0])
        for layer in module.layers:
            file_keys[(module.component, f"{layer}.lora_A.weight")] = module.down
            file_keys[(module.component, f"{layer}.lora_B.weight")] = module.up
            name = f"{module.component}.{layer}"
            expected[name], ranks[name], alphas[name] = module.scale, rank, module.scale * rank
    for key, (component, layer) in (biases or {}).items():
        targets[key] = Target(component, layer, LORA_BIAS)
        file_keys[(component, f"{layer}.{LORA_BIAS}")] = key
    return NormalizedAdapter(
        format=layout,
        kind="LoRA",
        state_dicts={c: sd for c, sd in state_dicts.items() if sd},
        file_keys=file_keys,
        targets=targets,
        expected_scales=expected,
        ranks=ranks,
        alphas=alphas,
        tensors=dict(adapter.tensors),
        untraced=list(untraced),
        flux_modules=by_first_layer,
    )


def layer_modules(component) -> dict[str, torch.nn.Module]:
    """The layers an adapter can target, by their names before any adapter wrapped them."""
    return {unwrapped_name(n): m for n, m in component.named_modules() if isinstance(m, LAYER_TYPES)}


def has_role(peft_key: str, role: str) -> bool:
    """`…to_q.lora_A.weight`, or `…to_q.lora_magnitude_vector` as peft saves a magnitude."""
    return f".{role}." in peft_key or peft_key.endswith(f".{role}")


def _flatten_kohya_magnitudes(adapter: AdapterFile, state_dicts: dict, file_key_of: dict) -> None:
    """Kohya / LyCORIS DoRA keeps a magnitude per output channel as `dora_scale` [out, 1], peft as [out]: the same
    numbers, so hand peft a flat view, traced to the same file key. A [1, in] scale decomposes per input channel,
    which peft's DoRA does not do."""
    for state_dict in state_dicts.values():
        for key, tensor in list(state_dict.items()):
            if not has_role(key, MAGNITUDE) or tensor.ndim != 2:
                continue
            if tensor.shape[1] != 1:
                raise AdapterLoadError(
                    f"{adapter.weights_path}: DoRA magnitude {file_key_of.get(id(tensor), key)} has shape "
                    f"{list(tensor.shape)}, a scale per input channel (LyCORIS `wd_on_output=False`); peft's DoRA keeps "
                    "one per output channel, so it cannot be applied as trained: train with `wd_on_output=True`"
                )
            flat = tensor.reshape(-1)
            if id(tensor) in file_key_of:
                file_key_of[id(flat)] = file_key_of[id(tensor)]
            state_dict[key] = flat


def to_peft_keys(component: str, prefixed: dict, pipeline) -> dict[str, torch.Tensor]:
    """The component's tensors with peft keys, through the same conversions diffusers' loaders apply."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    state_dict = {k.removeprefix(f"{component}."): v for k, v in prefixed.items() if k.startswith(f"{component}.")}
    if not state_dict:
        return {}
    if is_denoiser(component):
        if not any("lora_A" in k for k in state_dict):
            state_dict = convert_unet_state_dict_to_peft(state_dict)
        return state_dict
    state_dict = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
    text_encoder = getattr(pipeline, component, None)
    if text_encoder is not None and not hasattr(text_encoder, "text_model"):
        state_dict = {k.removeprefix("text_model."): v for k, v in state_dict.items()}
    return state_dict


def pattern_value(patterns: dict, module: str, default):
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(patterns.keys(), module)
    return patterns.get(key, default)
