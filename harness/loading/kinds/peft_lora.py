"""LoRA (and DoRA) in PEFT's and diffusers' names: peft's `save_pretrained` folder (`base_model.model.…` beside
adapter_config.json), a denoiser's `save_lora_adapter` file (PEFT keys without a component prefix, its LoraConfig in
the file's metadata), diffusers' `save_lora_weights` (`unet.…`, `transformer.…`, `text_encoder.…`, with
`lora_adapter_metadata`) and its older attention-processor layout. Keys are renamed by diffusers' and peft's own
conversions, which keep the tensors: each is traced by identity and proven by value. `modules_to_save` rides along
(`replaced_modules`)."""

from __future__ import annotations

import json

from lora_harness.bases.families import DENOISER_COMPONENTS, Family, Signature
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.kohya_names import UNET_PARTS
from lora_harness.loading.layouts import ATTN_PROCS, DIFFUSERS, PEFT_FILE, PEFT_FOLDER
from lora_harness.loading.normalized import COMPONENTS, NormalizedAdapter, from_prefixed
from lora_harness.loading.peft_injection import apply_normalized
from lora_harness.loading.proof import by_tensors
from lora_harness.loading.replaced_modules import LORA_METADATA_KEY


def layout(adapter: AdapterFile) -> str | None:
    keys = list(adapter.tensors)
    if adapter.adapter_config is not None and all(k.startswith("base_model.model.") for k in keys):
        return PEFT_FOLDER
    if any(".processor." in k and "_lora." in k for k in keys):
        return ATTN_PROCS
    if all(k.startswith(tuple(f"{c}." for c in COMPONENTS)) for k in keys):
        return DIFFUSERS
    if any(".lora_A." in k or ".lora.down." in k for k in keys):
        return PEFT_FILE
    return None


def _claims(adapter: AdapterFile, family: Family) -> bool:
    return layout(adapter) is not None


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    refuse_damaged(adapter)
    return apply_normalized(pipeline, base_signature, adapter, normalize(adapter, pipeline), adapter_name, by_tensors)


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    found = layout(adapter)
    tensors = dict(adapter.tensors)
    lora_configs: dict[str, dict] = {}
    if found == PEFT_FOLDER:
        # peft's save_pretrained wraps one model; diffusers has no loader for that layout, so map it here.
        component = _component_of((k.removeprefix("base_model.model.") for k in tensors), pipeline)
        prefixed = {f"{component}.{k.removeprefix('base_model.model.')}": v for k, v in tensors.items()}
        lora_configs[component] = _lora_config_kwargs(adapter.adapter_config)
    elif found == PEFT_FILE:  # written by a denoiser's own save_lora_adapter
        component = _component_of(tensors, pipeline)
        prefixed = {f"{component}.{k}": v for k, v in tensors.items()}
        lora_configs = _metadata_configs(adapter, default_component=component)
    elif found == ATTN_PROCS:
        prefixed = {
            k if k.startswith(tuple(f"{c}." for c in COMPONENTS)) else f"unet.{k}": v for k, v in tensors.items()
        }
    else:
        prefixed = tensors
        lora_configs = _metadata_configs(adapter, default_component=None)
    return from_prefixed(adapter, found, tensors, prefixed, pipeline, lora_configs)


def _component_of(keys, pipeline) -> str:
    """The model a file without component prefixes was saved from, told by its module names: a text encoder's,
    the base's denoiser when its top-level modules hold every key's, else a U-Net's or a transformer's."""
    keys = list(keys)
    if any(
        ".text_model." in k or k.startswith(("text_model.", "encoder.layers.")) or ".encoder.layers." in k for k in keys
    ):
        return "text_encoder"
    tops = {k.split(".")[0] for k in keys}
    for component in DENOISER_COMPONENTS:
        model = getattr(pipeline, component, None)
        if model is not None and tops <= {name for name, _ in model.named_children()}:
            return component
    return "unet" if tops & set(UNET_PARTS) else "transformer"


def _lora_config_kwargs(config: dict) -> dict:
    from peft import LoraConfig

    allowed = set(LoraConfig.__dataclass_fields__) - {"peft_type", "task_type", "base_model_name_or_path", "revision"}
    return {k: v for k, v in config.items() if k in allowed}


def _metadata_configs(adapter: AdapterFile, default_component: str | None) -> dict[str, dict]:
    raw = adapter.file_metadata.get(LORA_METADATA_KEY)
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise AdapterLoadError(
            f"{adapter.weights_path}: its `{LORA_METADATA_KEY}` metadata is not valid JSON; save the adapter again"
        ) from None
    if not isinstance(metadata, dict):
        raise AdapterLoadError(
            f"{adapter.weights_path}: its `{LORA_METADATA_KEY}` metadata is a JSON {type(metadata).__name__}, not an "
            "object of LoraConfig fields; save the adapter again"
        )
    prefixed = any(k.startswith(tuple(f"{c}." for c in COMPONENTS)) for k in metadata)
    if not prefixed:
        return {default_component or "unet": _lora_config_kwargs(metadata)}
    configs = {}
    for component in COMPONENTS:
        part = {k.removeprefix(f"{component}."): v for k, v in metadata.items() if k.startswith(f"{component}.")}
        if part:
            configs[component] = _lora_config_kwargs(part)
    return configs


KIND = AdapterKind("LoRA in PEFT's or diffusers' names", _claims, apply)
