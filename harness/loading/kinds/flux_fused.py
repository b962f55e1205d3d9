"""Flux LoRAs in the community's layouts (Kohya's sd-scripts, ComfyUI, XLabs: Flux's original module names, with
q, k, v, and a single-stream block's MLP input, in one fused linear), converted by diffusers' own Flux conversion,
which splits the fused modules and bakes alpha into the values. Each module of the file is traced to the rows of
the layers its update fills (`flux_layouts`), and proven by update (`proof.by_updates`)."""

from __future__ import annotations

from lora_harness.bases.families import Family, Signature, keys_signature, pipeline_signature
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError, FamilyMismatch
from lora_harness.loading.adapter_kind import AdapterKind
from lora_harness.loading.application import Application
from lora_harness.loading.damaged_tensors import refuse_damaged
from lora_harness.loading.flux_layouts import COMFYUI_FLUX_PEFT, convert, flux_layout, flux_modules
from lora_harness.loading.normalized import NormalizedAdapter, from_modules, layer_modules
from lora_harness.loading.peft_injection import apply_normalized
from lora_harness.loading.proof import by_updates


def _claims(adapter: AdapterFile, family: Family) -> bool:
    layout = flux_layout(list(adapter.tensors))
    # ComfyUI's names in peft's factor names are read as Flux's only where Flux's loader is the base's (Flux, Chroma):
    # other models' original names look alike (HunyuanVideo's `double_blocks.N.img_attn_qkv`).
    return layout is not None and (layout != COMFYUI_FLUX_PEFT or _loads_as_flux(family))


def _loads_as_flux(family: Family) -> bool:
    import diffusers
    from diffusers.loaders import FluxLoraLoaderMixin

    return any(issubclass(getattr(diffusers, name, type), FluxLoraLoaderMixin) for name in family.pipelines)


def apply(pipeline, base_signature: Signature, adapter: AdapterFile, adapter_name: str) -> Application:
    refuse_damaged(adapter)
    return apply_normalized(pipeline, base_signature, adapter, normalize(adapter, pipeline), adapter_name, by_updates)


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    """Flux in Kohya's, ComfyUI's or XLabs' layout: converted by diffusers (fused modules split, alpha baked in),
    each module of the file traced to the layers whose rows its update fills."""
    layout = flux_layout(list(adapter.tensors))
    text_encoder = getattr(pipeline, "text_encoder", None)
    modules = flux_modules(adapter.tensors, layout, layer_modules(text_encoder) if text_encoder is not None else {})
    traced = {key for module in modules.values() for key in (module.down, module.up)}
    left_out = [k for k in adapter.tensors if not k.endswith(".alpha") and k not in traced]
    if left_out:
        raise AdapterLoadError(
            f"{adapter.weights_path}: {len(left_out)} tensors that diffusers' Flux loader does not apply, first "
            f"{', '.join(left_out[:3])} (it drops DoRA magnitudes, T5 text-encoder and norm-offset keys, and has no "
            "place for modules it does not know); lora-harness will not check a partial load: export the adapter without them"
        )
    # Flux.2's trainers write BFL's names too: a file of another width is another family's, said before diffusers'
    # Flux.1 conversion fails on its sizes.
    widths = {adapter.tensors[m.down].shape[1] for m in modules.values() if m.layers[0].endswith("attn.to_q")}
    base = pipeline_signature(pipeline)
    if widths and base.width not in widths:
        width = min(widths)
        made_for = keys_signature("transformer", width, [], base) or f"a transformer {width} wide"
        raise FamilyMismatch(adapter.weights_path, made_for, base)
    single_stream_rows = [adapter.tensors[m.up].shape[0] for m in modules.values() if m.layers[-1].endswith("proj_mlp")]
    try:
        converted = convert(adapter.tensors)
    except AssertionError:
        # Its one assertion: a single-stream block's linear1 is cut at Flux.1's sizes whatever the base is.
        raise AdapterLoadError(
            f"{adapter.weights_path}: diffusers' conversion of this layout cuts a single-stream block's `linear1` at "
            f"Flux.1's widths (q, k, v 3072 each, MLP 12288: 21504 rows), but this file's has "
            f"{single_stream_rows[0] if single_stream_rows else '?'}; diffusers cannot load it into this base: pass the "
            "Flux base it was trained on"
        ) from None
    except (KeyError, ValueError, NotImplementedError, RuntimeError) as error:
        raise AdapterLoadError(
            f"{adapter.weights_path}: diffusers' Flux conversion failed on it ({type(error).__name__}: {error}); a fused "
            "module's rows do not split the way Flux's do: the file is damaged or made for another model, export it again"
        ) from None
    return from_modules(adapter, layout, modules, converted, pipeline)


KIND = AdapterKind("Flux's community layouts", _claims, apply)
