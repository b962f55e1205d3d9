"""LoHa and LoKr as peft implements them (`peft_type` LOHA / LOKR in adapter_config.json), saved by peft's
`save_pretrained` (`base_model.model.…`) or by diffusion-pipe (its ComfyUI format: `diffusion_model.…` before the
denoiser's diffusers module paths, alpha forced to the rank). diffusers converts neither (its loaders take LoRA).

Applied by peft itself, on the denoiser (Wan 2.2's second expert for a file named for it): the folder's config
rebuilt as peft's own (`LoHaConfig`, `LoKrConfig`), injected by diffusers' `add_adapter` (peft's
`inject_adapter_in_model`, so diffusers' `set_adapters`, scale and `delete_adapters` reach its layers as they reach
LoRA's), the file's tensors set by peft's `set_peft_model_state_dict`. The proof: each tensor found in its layer by
value, and no layer built that the file holds nothing for. The scale is the config's alpha / r by construction (peft
builds the layers from it), and the rank the file's factors hold must be the config's (peft refuses other shapes)."""

from __future__ import annotations

import difflib
import warnings
from collections import Counter

import torch

from lora_harness.bases.families import (
    WIDTH_MODULES,
    Family,
    Signature,
    denoiser_component,
    family_of_pipeline,
    keys_signature,
)
from lora_harness.bases.parameter_names import unwrapped_name
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError, FamilyMismatch
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application, describe_unmatched
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.experts import for_second_expert
from lora_harness.loading.layouts import DIFFUSION_MODEL, DIFFUSION_MODEL_PREFIX, PEFT_FOLDER
from lora_harness.loading.lycoris_modules import LycorisFactors
from lora_harness.loading.normalized import pattern_value
from lora_harness.loading.peft_injection import PeftOnBase, remove_adapter
from lora_harness.loading.proof import landed_tensor, most_common, same_values, tensor_facts
from lora_harness.loading.traced_kronecker import kronecker_shape

ALGOS = {"LOHA": "LoHa", "LOKR": "LoKr"}  # peft_type -> the algo as the field names it
PREFIXES = {"base_model.model.": PEFT_FOLDER, DIFFUSION_MODEL_PREFIX: DIFFUSION_MODEL}
TUCKER_ROLES = ("hada_t1", "hada_t2", "lokr_t2")  # peft's `use_effective_conv2d` on convolutions


def _prefix(adapter: AdapterFile) -> str | None:
    return next((p for p in PREFIXES if all(key.startswith(p) for key in adapter.tensors)), None)


def _claims(adapter: AdapterFile, family: Family) -> bool:
    peft_type = (adapter.adapter_config or {}).get("peft_type")
    return peft_type in ALGOS and _prefix(adapter) is not None


def _config(adapter: AdapterFile):
    from peft import LoHaConfig, LoKrConfig

    config_class = {"LOHA": LoHaConfig, "LOKR": LoKrConfig}[adapter.adapter_config["peft_type"]]
    fields = set(config_class.__dataclass_fields__) - {"peft_type", "task_type", "base_model_name_or_path", "revision"}
    return config_class(**{k: v for k, v in adapter.adapter_config.items() if k in fields})


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    from peft import set_peft_model_state_dict

    refuse_damaged(adapter)
    prefix, kind = _prefix(adapter), ALGOS[adapter.adapter_config["peft_type"]]
    component_name = _component(pipeline, adapter)
    component = getattr(pipeline, component_name)
    where = adapter.path / "adapter_config.json"
    tensors = {key.removeprefix(prefix): adapter.tensors[key] for key in adapter.tensors}
    tucker = next((key for key in tensors if key.rpartition(".")[2] in TUCKER_ROLES), None)
    if tucker is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: a {kind} with Tucker factors (`{prefix + tucker}`, peft's `use_effective_conv2d`), "
            "a valid file of a kind lora-harness does not apply yet from peft's folders (it applies LyCORIS's own "
            "Tucker files; this one is applied by peft's `PeftModel.from_pretrained`); nothing of it is applied"
        )
    modules: dict[str, dict[str, str]] = {}  # layer path -> role -> key in `tensors`
    for key in tensors:
        path, _, role = key.rpartition(".")
        modules.setdefault(path, {})[role] = key
    _refuse_another_family(adapter, tensors, modules, component_name, base_signature)
    layers = {unwrapped_name(name): module for name, module in component.named_modules()}
    unmatched = []
    for key in tensors:
        path = key.rpartition(".")[0]
        if path not in layers:
            nearest = difflib.get_close_matches(path, list(layers), n=3, cutoff=0.6)
            unmatched.append((prefix + key, f"{component_name}.{path}", nearest))
    if unmatched:  # peft would build layers for the config's targets and leave them at their initial values
        raise AdapterLoadError(
            f"{adapter.weights_path}: {len(unmatched)} of its {len(tensors)} {kind} tensors match no module of the "
            f"base's {component_name}; " + describe_unmatched(unmatched, [])
        )
    config = _config(adapter)
    try:
        with warnings.catch_warnings():  # several adapters share the base on purpose; peft warns about each
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            try:
                component.add_adapter(config, adapter_name)
                set_peft_model_state_dict(component, tensors, adapter_name)  # a tensor it has no place for: not proven
            except (ValueError, RuntimeError, TypeError, KeyError) as error:
                raise AdapterLoadError(
                    f"{where}: peft could not build its {kind} on the base's {component_name} "
                    f"({type(error).__name__}: {error}); check that it was trained on this base"
                ) from None
        application = _prove(
            adapter, config, tensors, modules, prefix, kind, component_name, component, adapter_name, base_signature
        )
    except BaseException:
        remove_adapter(pipeline, adapter_name)  # a half-made injection leaves no layer or adapter name behind
        raise
    application.on_base = PeftOnBase(pipeline, adapter_name)
    return application


def _refuse_another_family(adapter: AdapterFile, tensors, modules, component_name: str, base_signature) -> None:
    """The family first, as for every kind: another family's modules are missing from this base, and saying whose
    they are is the fix. Read from the input width the registry's width-reading modules take."""
    reading = WIDTH_MODULES.get(component_name, ())
    widths = Counter(
        _input_width({role: tensors[key] for role, key in roles.items()})
        for path, roles in modules.items()
        if reading and path.endswith(reading)
    )
    widths.pop(None, None)
    if not widths:
        return
    made_for = keys_signature(component_name, widths.most_common(1)[0][0], list(modules), base_signature)
    if made_for is not None and made_for != base_signature:
        raise FamilyMismatch(adapter.weights_path, made_for, base_signature)


def _input_width(roles: dict[str, torch.Tensor]) -> int | None:
    """The input width a module's factors read: LoHa's w1_b columns, LoKr's kron(w1, w2) columns."""
    if "hada_w1_b" in roles:
        return int(roles["hada_w1_b"].shape[1])
    has_w1 = "lokr_w1" in roles or {"lokr_w1_a", "lokr_w1_b"} <= set(roles)
    has_w2 = "lokr_w2" in roles or {"lokr_w2_a", "lokr_w2_b"} <= set(roles)
    return int(kronecker_shape(roles)[1]) if has_w1 and has_w2 else None


def _component(pipeline, adapter: AdapterFile) -> str:
    """The denoiser, or Wan 2.2's second expert for a file named for it (as `experts.onto_expert` puts a LoRA)."""
    expert = family_of_pipeline(pipeline).denoiser.second_expert
    if expert is not None and getattr(pipeline, expert, None) is not None and for_second_expert(adapter):
        return expert
    return denoiser_component(pipeline)


def _prove(
    adapter, config, tensors, modules, prefix, kind, component_name, component, adapter_name, base_signature
) -> Application:
    """Each file tensor in the layer peft built for it, by value; no layer built that the file holds nothing for."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    applied, mismatches = 0, []
    scales, ranks, alphas, layer_params, lora_layers, lycoris_factors = {}, {}, {}, {}, {}, {}
    for path, roles in modules.items():
        layer = component.get_submodule(path)
        name = f"{component_name}.{path}"
        if not isinstance(layer, BaseTunerLayer) or adapter_name not in getattr(layer, "scaling", {}):
            mismatches += [prefix + key for key in roles.values()]
            continue
        for role, key in roles.items():
            landed = landed_tensor(layer, role, adapter_name)
            if landed is not None and same_values(landed, tensors[key]):
                applied += 1
            else:
                mismatches.append(prefix + key)
        ranks[name] = int(pattern_value(config.rank_pattern or {}, path, config.r))
        alphas[name] = float(pattern_value(config.alpha_pattern or {}, path, config.alpha))
        scales[name] = float(layer.scaling[adapter_name])
        factors = {role: tensors[key] for role, key in roles.items()}
        lycoris_factors[name] = LycorisFactors(factors, scales[name], layer, kind)
        layer_params[name] = sum(p.numel() for n, p in layer.named_parameters() if f".{adapter_name}." in f".{n}.")
        lora_layers[name] = layer
    built = [
        unwrapped_name(path)
        for path, layer in component.named_modules()
        if isinstance(layer, BaseTunerLayer) and adapter_name in getattr(layer, "scaling", {})
    ]
    invented = [path for path in built if path not in modules]
    if invented:  # built from the config's targets at peft's initial values: no file tensor says what they add
        raise AdapterLoadError(
            f"{adapter.path / 'adapter_config.json'}: its target_modules make peft build {len(invented)} {kind} layers "
            f"the file holds no tensor for, first {component_name}.{invented[0]}; lora-harness will not check what it "
            "cannot trace to the file: save the adapter again, or edit target_modules to the modules it holds"
        )
    keys = list(tensors)
    return Application(
        adapter_name=adapter_name,
        format=PREFIXES[prefix],
        family=base_signature.family,
        **tensor_facts(adapter, [prefix + key for key in keys]),
        tensors_applied=applied,
        lora_params=sum(layer_params.values()),
        rank=most_common(ranks.values()),
        alpha=most_common(alphas.values()),
        scale=most_common(scales.values()),
        scales=scales,
        value_mismatches=mismatches,
        lora_layers=lora_layers,
        layer_params=layer_params,
        lycoris_factors=lycoris_factors,
        ranks=sorted(set(ranks.values())),
        alphas=sorted(set(alphas.values())),
        kind=kind,
        architecture=base_signature.architecture,
    )


KIND = AdapterKind("LoHa or LoKr as peft saves it", _claims, apply)
