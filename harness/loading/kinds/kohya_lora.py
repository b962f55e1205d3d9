"""LoRA in Kohya's names: sd-scripts' `lora_unet_…` / `lora_te_…` (SDXL's `lora_te1_`/`lora_te2_`, its U-Net named
after diffusers' blocks or SGM's) with an `.alpha` per module, brought to diffusers' names by diffusers' own Kohya
conversion. It renames without copying, so each tensor is traced by identity and proven by value."""

from __future__ import annotations

from lora_harness.bases.families import Family, Signature
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.kohya_names import DIFFUSERS_BLOCKS, KOHYA_COMPONENTS, SGM_BLOCKS
from lora_harness.loading.layouts import KOHYA
from lora_harness.loading.normalized import NormalizedAdapter, from_prefixed
from lora_harness.loading.peft_injection import apply_normalized
from lora_harness.loading.proof import by_tensors


def _claims(adapter: AdapterFile, family: Family) -> bool:
    return all(k.startswith(tuple(KOHYA_COMPONENTS)) for k in adapter.tensors)


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    refuse_damaged(adapter)
    return apply_normalized(pipeline, base_signature, adapter, normalize(adapter, pipeline), adapter_name, by_tensors)


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    tensors = dict(adapter.tensors)
    alphas_in_file = {  # file key of a down tensor -> its module's alpha
        key.removesuffix(".alpha") + ".lora_down.weight": float(value)
        for key, value in tensors.items()
        if key.endswith(".alpha")
    }
    _refuse_mixed_block_names(adapter)
    try:
        converted = dict(tensors)
        unet = getattr(pipeline, "unet", None)
        if unet is not None:
            # sd-scripts trains SDXL on its own U-Net, named after SGM's blocks (`lora_unet_input_blocks_4_1_…`),
            # which only the base's layout maps to diffusers' (layers per block): the SD and SDXL pipelines'
            # `lora_state_dict(…, unet_config=unet.config)` runs this first; it renames, keeping the tensors.
            converted = _maybe_map_sgm_blocks_to_diffusers(converted, unet.config)
        prefixed, network_alphas = _convert_non_diffusers_lora_to_diffusers(converted)
    except (KeyError, ValueError, IndexError) as error:
        raise AdapterLoadError(
            f"{adapter.weights_path}: Kohya keys that diffusers cannot map ({error}); "
            "the file was probably renamed by hand: convert it again with the trainer's own tools"
        ) from None
    return from_prefixed(
        adapter, KOHYA, tensors, prefixed, pipeline, {}, file_alphas=alphas_in_file, network_alphas=network_alphas
    )


def _refuse_mixed_block_names(adapter: AdapterFile) -> None:
    """diffusers' SGM mapping drops every SGM-named key, without a word, from a file that also has diffusers' names."""
    sgm = next((k for k in adapter.tensors if k.startswith(SGM_BLOCKS)), None)
    named = next((k for k in adapter.tensors if k.startswith(DIFFUSERS_BLOCKS)), None)
    if sgm and named:
        raise AdapterLoadError(
            f"{adapter.weights_path}: U-Net keys named after SGM's blocks (`{sgm}`) and after diffusers' (`{named}`) "
            "in one file; diffusers' conversion drops the SGM-named ones, and lora-harness will not check a partial load: "
            "export the adapter again with the trainer's own tools, in one naming"
        )


KIND = AdapterKind("Kohya LoRA", _claims, apply)
