"""The kinds of adapter file, one module each, asked in turn which file is theirs: the first that claims a file
applies it. The order matters where two kinds' keys overlap: peft's own LoHa and LoKr before the other kinds peft
saves, which are named; a kind named but not applied before any that would apply part of it; the trainers' layouts a family's pipeline converts before the same keys read as Flux's community
layouts or Kohya's; a transformer's original names a family cannot convert before Kohya's and PEFT's.

Adding a kind: one module here with its `KIND` (how it claims a file, applies it and proves what landed: see
`adapter_kind.AdapterKind`), its place in `KINDS`, and its tests."""

from __future__ import annotations

from lora_harness.bases.families import Family, Signature, family_of_pipeline
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.kinds import (
    diffusers_lokr,
    flux_fused,
    kohya_lora,
    lycoris,
    peft_lora,
    peft_tuners,
    trainer_layouts,
    unapplied,
)

KINDS: tuple[AdapterKind, ...] = (
    peft_tuners.KIND,
    unapplied.NAMED,
    lycoris.KIND,
    unapplied.UNCONVERTED_LOKR,
    diffusers_lokr.KIND,
    trainer_layouts.KIND,
    flux_fused.KIND,
    unapplied.UNCONVERTED,
    kohya_lora.KIND,
    peft_lora.KIND,
)


def kind_of(adapter: AdapterFile, family: Family) -> AdapterKind:
    if not len(adapter.tensors):
        raise AdapterLoadError(f"{adapter.weights_path}: holds no tensors; save the adapter again")
    claimed = next((kind for kind in KINDS if kind.claims(adapter, family)), None)
    if claimed is not None:
        return claimed
    refuse_damaged(adapter)  # a damaged file is said to be damaged, not of an unknown layout
    keys = list(adapter.tensors)
    raise AdapterLoadError(
        f"{adapter.weights_path}: no known LoRA layout (first keys: {', '.join(keys[:3])}); expected PEFT "
        "(`…lora_A.weight`), diffusers (`unet.…lora.down.weight`) or Kohya (`lora_unet_…lora_down.weight`) keys"
    )


def apply_adapter(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    """The adapter on the base as its kind applies it, with the proof of what landed; its `on_base` switches it on
    while it renders and takes it off."""
    kind = kind_of(adapter, family_of_pipeline(pipeline))
    return kind.apply(pipeline, base_signature, adapter, adapter_name)
