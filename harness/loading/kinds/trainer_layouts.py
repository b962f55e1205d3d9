"""Files in a trainer's own layout that the base's pipeline class converts itself: musubi-tuner's `lora_unet_…`
with `.alpha`, ai-toolkit's and ComfyUI's `diffusion_model.…`, and BFL's original names (Flux's community layouts)
as Flux.2's trainers write them. The class's own `lora_state_dict` converts them, as its `load_lora_weights` would;
each converted layer is traced back to the file module it came from (`traced_conversion`), and proven by update
(`proof.by_updates`)."""

from __future__ import annotations

from lora_harness.bases.families import Family, Signature
from lora_harness.loading.adapter_file import AdapterFile
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.flux_layouts import COMFYUI_FLUX_PEFT, flux_layout
from lora_harness.loading.kohya_names import KOHYA_COMPONENTS, names_a_unet
from lora_harness.loading.layouts import DIFFUSION_MODEL, DIFFUSION_MODEL_PREFIX, KOHYA
from lora_harness.loading.normalized import NormalizedAdapter, from_modules
from lora_harness.loading.peft_injection import apply_normalized
from lora_harness.loading.proof import by_updates
from lora_harness.loading.traced_conversion import trace, traced_by_loader


def _layout(adapter: AdapterFile) -> str | None:
    keys = list(adapter.tensors)
    flux = flux_layout(keys)
    if flux is not None and flux != COMFYUI_FLUX_PEFT:  # those read as `diffusion_model.` keys, as they always were
        return flux
    if all(k.startswith(DIFFUSION_MODEL_PREFIX) for k in keys):
        return DIFFUSION_MODEL
    if all(k.startswith(tuple(KOHYA_COMPONENTS)) for k in keys):
        return KOHYA
    return None


def _claims(adapter: AdapterFile, family: Family) -> bool:
    # A Kohya file of an SD U-Net goes the way SD's loaders take it, whatever the base: named for its family there.
    return family.converts_trainer_layouts and _layout(adapter) is not None and not names_a_unet(adapter.tensors)


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    refuse_damaged(adapter)
    return apply_normalized(pipeline, base_signature, adapter, normalize(adapter, pipeline), adapter_name, by_updates)


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    """A trainer's layout that the base's pipeline class converts itself, traced back to the file by value."""
    layout = _layout(adapter)
    traced = traced_by_loader(adapter, pipeline, f"{layout} layout", trace)
    return from_modules(
        adapter, layout, traced.modules, traced.converted, pipeline, untraced=traced.dropped, biases=traced.biases
    )


KIND = AdapterKind("a trainer's layout the base's pipeline converts", _claims, apply)
