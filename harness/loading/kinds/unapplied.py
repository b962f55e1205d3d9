"""Adapter kinds the harness recognises by their keys but does not apply. A file of one is valid: it is named for
what it is and for what applies it, never called damaged; none of it is applied, since checking part of an
adapter would validate something else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lora_harness.bases.families import FAMILIES, Family
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.flux_layouts import flux_layout
from lora_harness.loading.layouts import DIFFUSION_MODEL_PREFIX
from lora_harness.loading.lycoris_modules import is_lycoris_file, lycoris_kind
from lora_harness.loading.traced_kronecker import KRONECKER


@dataclass(frozen=True)
class UnappliedKind:
    name: str
    applied_by: str
    example: Callable[[dict[str, torch.Tensor], dict | None], str | None]  # (tensors, adapter_config) -> a key of it


def _peft_type(tensors, config):
    kind = (config or {}).get("peft_type")
    return f"adapter_config.json: peft_type {kind}" if kind not in (None, "LORA") else None


def _both_experts(tensors, config):
    return next(
        (k for k in tensors if k.startswith(("diffusion_model.transformer_1.", "diffusion_model.transformer_2."))), None
    )


KINDS = (
    UnappliedKind("PEFT adapter of a kind other than LoRA", "peft's `PeftModel.from_pretrained`", _peft_type),
    UnappliedKind(
        "Wan 2.2 LoRA holding both experts in one file, as ai-toolkit writes it without `split_multistage_loras`",
        "ai-toolkit's own loader; with that option, its default, ai-toolkit saves it as two files diffusers loads, "
        "`<name>_high_noise.safetensors` and `<name>_low_noise.safetensors`, which lora-harness checks",
        _both_experts,
    ),
)


def unapplied_kind(tensors: dict[str, torch.Tensor], adapter_config: dict | None) -> tuple[UnappliedKind, str] | None:
    """(kind, an example key or config entry) for a file of a kind the harness does not apply; None otherwise."""
    for kind in KINDS:
        example = kind.example(tensors, adapter_config)
        if example is not None:
            return kind, example
    return None


def _lycoris_for_flux(keys) -> bool:
    return flux_layout(keys) is not None and is_lycoris_file(keys)


def _claims_named(adapter: AdapterFile, family: Family) -> bool:
    return unapplied_kind(adapter.tensors, adapter.adapter_config) is not None or _lycoris_for_flux(
        list(adapter.tensors)
    )


def _refuse_named(pipeline, base_signature, adapter: AdapterFile, adapter_name: str):
    found = unapplied_kind(adapter.tensors, adapter.adapter_config)
    if found is not None:
        kind, example = found
        raise AdapterLoadError(
            f"{adapter.weights_path}: a {kind.name} (`{example}`), a valid file of a kind lora-harness does not apply "
            f"yet (it is applied by {kind.applied_by}); nothing of it is applied, as a partial load would validate something else"
        )
    keys = list(adapter.tensors)
    raise AdapterLoadError(  # a valid file, whatever its tensors' shapes
        f"{adapter.weights_path}: a LyCORIS {lycoris_kind(keys)} for Flux (Flux's original module names); "
        "lora-harness applies LyCORIS files for U-Net families only and will not check a partial load"
    )


NAMED = AdapterKind("a kind named, not applied", _claims_named, _refuse_named)


# Files named after a transformer's original (non-diffusers) modules, on a family whose pipeline has no conversion
# for them (those that have one convert them: `trainer_layouts`).
UNCONVERTED_LAYOUTS = {
    "lora_unet_joint_blocks_": "an SD3 LoRA in Kohya's layout",
    "diffusion_model.joint_blocks.": "an SD3 LoRA in ComfyUI's layout",
    DIFFUSION_MODEL_PREFIX: "a LoRA named after a transformer's original (not diffusers') modules",
}


def _unconverted(adapter: AdapterFile) -> tuple[str, str] | None:
    for marker, what in UNCONVERTED_LAYOUTS.items():
        example = next((k for k in adapter.tensors if k.startswith(marker)), None)
        if example is not None:
            return what, example
    return None


def _claims_unconverted(adapter: AdapterFile, family: Family) -> bool:
    return not family.converts_trainer_layouts and _unconverted(adapter) is not None


def _refuse_unconverted(pipeline, base_signature, adapter: AdapterFile, adapter_name: str):
    refuse_damaged(adapter)
    what, example = _unconverted(adapter)
    raise AdapterLoadError(
        f"{adapter.weights_path}: {what} (keys like `{example}`), which diffusers does not convert; "
        "export it in diffusers' layout (`transformer.…lora_A.weight`) and check that file"
    )


UNCONVERTED = AdapterKind("a transformer's original names, unconverted", _claims_unconverted, _refuse_unconverted)


def _claims_unconverted_lokr(adapter: AdapterFile, family: Family) -> bool:
    keys = list(adapter.tensors)
    return not family.converts_lokr and any(KRONECKER in key for key in keys) and not is_lycoris_file(keys)


def _refuse_unconverted_lokr(pipeline, base_signature, adapter: AdapterFile, adapter_name: str):
    refuse_damaged(adapter)
    example = next(key for key in adapter.tensors if KRONECKER in key)
    converting = " and ".join(family.name for family in FAMILIES if family.converts_lokr)
    raise AdapterLoadError(
        f"{adapter.weights_path}: a LoKr named after the denoiser's modules (`{example}`), as ComfyUI-format trainers "
        f"write it (diffusion-pipe, ai-toolkit), a valid file of a kind lora-harness does not apply yet on "
        f"{type(pipeline).__name__}: diffusers' loaders convert such files for {converting} only (it is "
        "applied by ComfyUI); nothing of it is applied, as a partial load would validate something else"
    )


UNCONVERTED_LOKR = AdapterKind(
    "a LoKr the base's pipeline does not convert", _claims_unconverted_lokr, _refuse_unconverted_lokr
)
