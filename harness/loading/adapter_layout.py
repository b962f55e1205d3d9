"""Every supported on-disk layout, brought to the one diffusers' loaders take, with a trace back to the file.

diffusers and peft do the conversions where they can; the trace follows each tensor by identity (the
conversions rename keys, they do not copy tensors), so the proof of application can name file keys. Flux's
community layouts are the exception: diffusers splits and rescales their tensors, so each module of the file is
traced by what it means (`flux_layouts`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch

from lora_harness.bases.families import (
    DENOISER_COMPONENTS,
    family_of_pipeline,
    is_denoiser,
    keys_signature,
    pipeline_signature,
)
from lora_harness.bases.parameter_names import is_tuner_parameter, unwrapped_name
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError, FamilyMismatch
from lora_harness.loading.converted_lokr import FUSED_QKV, is_kronecker, trace_kronecker
from lora_harness.loading.flux_layouts import LAYOUTS as FLUX_LAYOUTS
from lora_harness.loading.flux_layouts import FluxModule, convert, flux_layout, flux_modules
from lora_harness.loading.kohya_names import DIFFUSERS_BLOCKS, KOHYA_COMPONENTS, SGM_BLOCKS
from lora_harness.loading.lycoris import declared_rank, is_lycoris_file, lycoris_kind
from lora_harness.loading.traced_conversion import BIAS_DIFFERENCE, trace
from lora_harness.loading.unapplied_kinds import unapplied_kind

LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
KOHYA = "kohya"
PEFT_FOLDER = "peft"
PEFT_FILE = "peft-file"  # PEFT key layout in one file, no component prefix, LoraConfig in its metadata
DIFFUSERS = "diffusers"
ATTN_PROCS = "diffusers-attn-procs"  # the older attention-processor layout
DIFFUSION_MODEL = "diffusion-model"  # ai-toolkit's and ComfyUI's: the transformer's names under `diffusion_model.`
DIFFUSION_MODEL_PREFIX = "diffusion_model."
MODULE_PATHS = "module-paths"  # the denoiser's own module paths, no prefix (SimpleTuner's LoKr files)
LORA_METADATA_KEY = "lora_adapter_metadata"
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


# Files named after a transformer's original (non-diffusers) modules that diffusers has no conversion for.
UNCONVERTED_LAYOUTS = {
    "lora_unet_joint_blocks_": "an SD3 LoRA in Kohya's layout",
    "diffusion_model.joint_blocks.": "an SD3 LoRA in ComfyUI's layout",
    "diffusion_model.": "a LoRA named after a transformer's original (not diffusers') modules",
}


def detect_format(adapter: AdapterFile, trainer_layouts: bool = False) -> str:
    """The file's layout. `trainer_layouts`: the base's pipeline converts trainers' own layouts itself."""
    keys = list(adapter.tensors)
    if not keys:
        raise AdapterLoadError(f"{adapter.weights_path}: holds no tensors; save the adapter again")
    unapplied = unapplied_kind(adapter.tensors, adapter.adapter_config)
    if unapplied is not None:
        kind, example = unapplied
        raise AdapterLoadError(
            f"{adapter.weights_path}: a {kind.name} (`{example}`), a valid file of a kind lora-harness does not apply "
            f"yet (it is applied by {kind.applied_by}); nothing of it is applied, as a partial load would validate something else"
        )
    flux = flux_layout(keys)
    if flux is not None and is_lycoris_file(keys):  # a valid file, whatever its tensors' shapes
        raise AdapterLoadError(
            f"{adapter.weights_path}: a LyCORIS {lycoris_kind(keys)} for Flux (Flux's original module names); "
            "lora-harness applies LyCORIS files for U-Net families only and will not check a partial load"
        )
    bad_alpha = next((k for k, t in adapter.tensors.items() if k.endswith(".alpha") and t.numel() != 1), None)
    if bad_alpha is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: alpha {bad_alpha} has shape {list(adapter.tensors[bad_alpha].shape)}, "
            "but an alpha is one number; the file is damaged, export it again"
        )
    whole = _saved_module_keys(adapter)  # `modules_to_save`: parameters of any shape
    bad_matrix = next(
        (
            k
            for k, t in adapter.tensors.items()
            if not k.endswith(".alpha") and k not in whole and not _plausible_shape(k, t)
        ),
        None,
    )
    if bad_matrix is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: tensor {bad_matrix} has shape {list(adapter.tensors[bad_matrix].shape)}, but a "
            "LoRA matrix is 2-D (4-D for a convolution), a DoRA magnitude or a bias 1-D, and none is empty; the file is "
            "damaged, export it again"
        )
    # sd-scripts' DyLoRA stores an alpha left unset as its rank, an integer: a number all the same.
    not_float = next(
        (k for k, t in adapter.tensors.items() if not t.is_floating_point() and not _integer_alpha(k, t)), None
    )
    if not_float is not None:
        raise AdapterLoadError(
            f"{adapter.weights_path}: tensor {not_float} holds {adapter.tensors[not_float].dtype}, but LoRA weights "
            "are floating point; the file was written wrongly, export it again"
        )
    if trainer_layouts and is_kronecker(keys):
        prefixes = {DIFFUSION_MODEL_PREFIX: DIFFUSION_MODEL, "transformer.": DIFFUSERS}
        return next(
            (layout for prefix, layout in prefixes.items() if all(k.startswith(prefix) for k in keys)), MODULE_PATHS
        )
    if flux is not None:
        return flux
    if trainer_layouts and all(k.startswith(DIFFUSION_MODEL_PREFIX) for k in keys):
        return DIFFUSION_MODEL
    for marker, what in UNCONVERTED_LAYOUTS.items():
        example = next((k for k in keys if k.startswith(marker)), None)
        if example is not None and not trainer_layouts:
            raise AdapterLoadError(
                f"{adapter.weights_path}: {what} (keys like `{example}`), which diffusers does not convert; "
                "export it in diffusers' layout (`transformer.…lora_A.weight`) and check that file"
            )
    if adapter.adapter_config is not None and all(k.startswith("base_model.model.") for k in keys):
        return PEFT_FOLDER
    if all(k.startswith(tuple(KOHYA_COMPONENTS)) for k in keys):
        return KOHYA
    if any(".processor." in k and "_lora." in k for k in keys):
        return ATTN_PROCS
    if all(k.startswith(tuple(f"{c}." for c in COMPONENTS)) for k in keys):
        return DIFFUSERS
    if any(".lora_A." in k or ".lora.down." in k for k in keys):
        return PEFT_FILE
    raise AdapterLoadError(
        f"{adapter.weights_path}: no known LoRA layout (first keys: {', '.join(keys[:3])}); expected PEFT "
        "(`…lora_A.weight`), diffusers (`unet.…lora.down.weight`) or Kohya (`lora_unet_…lora_down.weight`) keys"
    )


def _normalize_flux(adapter: AdapterFile, pipeline, layout: str) -> NormalizedAdapter:
    """Flux in Kohya's, ComfyUI's or XLabs' layout: converted by diffusers (fused modules split, alpha baked in),
    each module of the file traced to the layers whose rows its update fills."""
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
        raise FamilyMismatch(
            f"{adapter.weights_path}: made for {made_for}, but the base is {base}; "
            "pass the base it was trained on with --base-model"
        )
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
    return _from_modules(adapter, layout, modules, converted, pipeline)


def _normalize_traced(adapter: AdapterFile, pipeline, layout: str) -> NormalizedAdapter:
    """A trainer's layout that the base's pipeline class converts itself, traced back to the file by value."""
    traced = _traced_by_loader(adapter, pipeline, f"{layout} layout", trace)
    return _from_modules(
        adapter, layout, traced.modules, traced.converted, pipeline, untraced=traced.dropped, biases=traced.biases
    )


def _traced_by_loader(adapter: AdapterFile, pipeline, what: str, tracer):
    """`tracer(tensors, pipeline)`: the base's pipeline class's own conversion of the file, traced back to it;
    refused, naming why, where the conversion fails or makes layers that no tensor of the file holds."""
    loader = type(pipeline).__name__
    # ai-toolkit's LoKr with both factors full stores the alpha it does not use as float16 infinity.
    unused_alpha = is_kronecker(adapter.tensors)
    nonfinite = next(
        (
            k
            for k, t in adapter.tensors.items()
            if t.is_floating_point() and not t.isfinite().all() and not (unused_alpha and k.endswith(".alpha"))
        ),
        None,
    )
    if nonfinite is not None:  # every proportion with NaN is NaN: such a file cannot be traced, only named
        raise AdapterLoadError(
            f"{adapter.weights_path}: tensor {nonfinite} holds NaN or Inf, so what {loader}'s conversion made of it "
            "cannot be traced to the file; the training diverged or the file is damaged: export a finite checkpoint"
        )
    try:
        traced = tracer(adapter.tensors, pipeline)
    except (KeyError, ValueError, IndexError, RuntimeError, NotImplementedError, AssertionError) as error:
        raise AdapterLoadError(
            f"{adapter.weights_path}: {loader}'s own conversion of this {what} failed "
            f"({type(error).__name__}: {error}); the file is damaged or made for another model: export it again"
        ) from None
    if traced.invented:
        raise AdapterLoadError(
            f"{adapter.weights_path}: {loader}'s conversion made {len(traced.invented)} layers that no tensor of the "
            f"file holds, first {', '.join(traced.invented[:3])}; lora-harness will not check what it cannot trace to the file"
        )
    return traced


def _normalize_kronecker(adapter: AdapterFile, pipeline, layout: str) -> NormalizedAdapter:
    """A LoKr file the base's pipeline class converts itself, loaded into peft's LoKr layers (`converted_lokr`)."""
    traced = _traced_by_loader(adapter, pipeline, "LoKr file", trace_kronecker)
    for layer in traced.layers.values():
        component, path = layer.split(".", 1)
        if path.endswith(FUSED_QKV) and path not in dict(getattr(pipeline, component).named_modules()):
            raise AdapterLoadError(
                f"{adapter.weights_path}: a LoKr on the fused q, k, v projection BFL's model has (`{path}`), as "
                "ai-toolkit writes Flux.2's; diffusers loads it only by fusing the base's q, k and v projections into "
                "one (`fuse_qkv_projections`), which changes the base under test and every adapter checked after it: "
                "lora-harness does not apply it"
            )
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    targets, file_keys, expected, ranks, alphas = {}, {}, {}, {}, {}
    for module, layer in traced.layers.items():
        component, path = layer.split(".", 1)
        roles = traced.roles[module]
        for role, key in roles.items():
            state_dicts.setdefault(component, {})[f"{path}.{role}"] = traced.converted[f"{layer}.{role}"]
            targets[key] = Target(component, path, role)
            file_keys[(component, f"{path}.{role}")] = key
        _, rank = declared_rank("LoKr", {role: adapter.tensors[key] for role, key in roles.items()})
        alpha = float(adapter.tensors[f"{module}.alpha"]) if f"{module}.alpha" in adapter.tensors else 0.0
        # Both factors full: LoKr applies them at 1, whatever the alpha (ai-toolkit stores an infinite one).
        expected[layer], ranks[layer], alphas[layer] = (
            (1.0, None, None) if rank is None else ((alpha or rank) / rank, rank, alpha or rank)
        )
    return NormalizedAdapter(
        format=layout,
        kind="LoKr",
        state_dicts=state_dicts,
        file_keys=file_keys,
        targets=targets,
        expected_scales=expected,
        ranks={name: rank for name, rank in ranks.items() if rank is not None},
        alphas={name: alpha for name, alpha in alphas.items() if alpha is not None},
        tensors=dict(adapter.tensors),
        untraced=traced.dropped,
    )


def _from_modules(
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
    state_dicts = {c: _to_peft_keys(c, converted, pipeline) for c in COMPONENTS}
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


def _integer_alpha(key: str, tensor: torch.Tensor) -> bool:
    return key.endswith(".alpha") and tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _plausible_shape(key: str, tensor: torch.Tensor) -> bool:
    if key.endswith(WEIGHT_DIFFERENCE):
        dimensions = (1, 2, 4)  # a norm's weight, a linear's, a convolution's
    elif MAGNITUDE in key or key.endswith((f".{LORA_BIAS}", BIAS_DIFFERENCE)):
        dimensions = (1,)
    else:
        dimensions = (2, 4)
    return tensor.ndim in dimensions and tensor.numel() > 0


def onto_expert(normalized: NormalizedAdapter, adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    """The adapter as loaded into the expert it was made for: on a base with a second expert (Wan 2.2), a file
    named for the low-noise one goes there; any other stays on the first (high-noise) one, as diffusers' loader puts it."""
    denoiser = family_of_pipeline(pipeline).denoiser
    expert = denoiser.second_expert
    if expert is not None and getattr(pipeline, expert, None) is not None and for_second_expert(adapter):
        return _onto_component(normalized, denoiser.component, expert)
    return normalized


# How trainers name a Wan 2.2 LoRA for the low-noise expert: ai-toolkit's `<name>_low_noise.safetensors`, lightx2v's
# `low_noise_model.safetensors`. Its other file (`high_noise`) is the first expert's, as any file is by default.
SECOND_EXPERT_MARK = "low_noise"


def for_second_expert(adapter: AdapterFile) -> bool:
    return SECOND_EXPERT_MARK in adapter.weights_path.stem.lower()


def _onto_component(normalized: NormalizedAdapter, component: str, onto: str) -> NormalizedAdapter:
    """The same adapter, loaded into another component of the same class (a second expert)."""

    def moved(name: str) -> str:
        first, dot, rest = name.partition(".")
        return f"{onto}{dot}{rest}" if first == component else name

    return dataclasses.replace(
        normalized,
        state_dicts={moved(c): sd for c, sd in normalized.state_dicts.items()},
        file_keys={(moved(c), k): key for (c, k), key in normalized.file_keys.items()},
        targets={key: dataclasses.replace(t, component=moved(t.component)) for key, t in normalized.targets.items()},
        expected_scales={moved(n): v for n, v in normalized.expected_scales.items()},
        ranks={moved(n): v for n, v in normalized.ranks.items()},
        alphas={moved(n): v for n, v in normalized.alphas.items()},
        lora_configs={moved(c): config for c, config in normalized.lora_configs.items()},
        replaced={moved(n): saved for n, saved in normalized.replaced.items()},
        network_alphas=normalized.network_alphas and {moved(n): a for n, a in normalized.network_alphas.items()},
        flux_modules={
            moved(n): dataclasses.replace(m, component=moved(m.component)) for n, m in normalized.flux_modules.items()
        },
    )


def normalize(adapter: AdapterFile, pipeline) -> NormalizedAdapter:
    converts = family_of_pipeline(pipeline).converts_trainer_layouts
    layout = detect_format(adapter, trainer_layouts=converts)
    if converts and is_kronecker(adapter.tensors):
        return _normalize_kronecker(adapter, pipeline, layout)
    # BFL's module names (Flux's community layouts) are Flux.2's trainers' names too: its own loader converts them.
    if converts and layout in (KOHYA, DIFFUSION_MODEL, *FLUX_LAYOUTS) and not _names_a_unet(adapter.tensors):
        return _normalize_traced(adapter, pipeline, layout)
    if layout in FLUX_LAYOUTS:
        return _normalize_flux(adapter, pipeline, layout)
    tensors = dict(adapter.tensors)
    lora_configs: dict[str, dict] = {}
    alphas_in_file: dict[str, float] = {}  # file key of a down/A tensor -> alpha
    network_alphas = None
    if layout == KOHYA:
        from diffusers.loaders.lora_conversion_utils import (
            _convert_non_diffusers_lora_to_diffusers,
            _maybe_map_sgm_blocks_to_diffusers,
        )

        for key, value in tensors.items():
            if key.endswith(".alpha"):
                alphas_in_file[key.removesuffix(".alpha") + ".lora_down.weight"] = float(value)
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
    elif layout == PEFT_FOLDER:
        # peft's save_pretrained wraps one model; diffusers has no loader for that layout, so map it here.
        component = _component_of((k.removeprefix("base_model.model.") for k in tensors), pipeline)
        prefixed = {f"{component}.{k.removeprefix('base_model.model.')}": v for k, v in tensors.items()}
        lora_configs[component] = _lora_config_kwargs(adapter.adapter_config)
    elif layout == PEFT_FILE:  # written by a denoiser's own save_lora_adapter
        component = _component_of(tensors, pipeline)
        prefixed = {f"{component}.{k}": v for k, v in tensors.items()}
        lora_configs = _metadata_configs(adapter, default_component=component)
    elif layout == ATTN_PROCS:
        prefixed = {
            k if k.startswith(tuple(f"{c}." for c in COMPONENTS)) else f"unet.{k}": v for k, v in tensors.items()
        }
    else:
        prefixed = tensors
        lora_configs = _metadata_configs(adapter, default_component=None)

    file_key_of = {id(tensor): key for key, tensor in tensors.items()}
    prefixed, replaced = _split_replaced(prefixed, lora_configs, file_key_of)
    state_dicts = {c: _to_peft_keys(c, prefixed, pipeline) for c in COMPONENTS}
    state_dicts = {c: sd for c, sd in state_dicts.items() if sd}
    _flatten_kohya_magnitudes(adapter, state_dicts, file_key_of)
    targets: dict[str, Target] = {}
    file_keys: dict[tuple[str, str], str] = {}
    for component, state_dict in state_dicts.items():
        for peft_key, tensor in state_dict.items():
            for role in ROLES:
                if _has_role(peft_key, role) and id(tensor) in file_key_of:
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
        if layout == KOHYA:
            alpha = alphas_in_file.get(key, float(rank))  # Kohya: no alpha means alpha = rank
        elif config is not None:
            alpha = float(
                _pattern_value(config.get("alpha_pattern") or {}, target.module, config.get("lora_alpha", rank))
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


def _split_replaced(prefixed: dict, lora_configs: dict, file_key_of: dict) -> tuple[dict, dict[str, dict[str, str]]]:
    """Take the modules a LoraConfig's `modules_to_save` names out of what diffusers' loaders get: they have no
    place for whole modules, and given the option peft would wrap each in a copy of the base's. peft names them as
    it matches them: the module's own name or a dotted suffix of it."""
    names = {component: config.pop("modules_to_save", None) or [] for component, config in lora_configs.items()}
    kept, replaced = {}, {}
    for key, tensor in prefixed.items():
        component, _, parameter = key.partition(".")
        module = None if is_tuner_parameter(parameter) else _saved_module(parameter, names.get(component, []))
        if module is None:
            kept[key] = tensor
        else:
            saved = replaced.setdefault(f"{component}.{module}", {})
            saved[parameter.removeprefix(f"{module}.")] = file_key_of[id(tensor)]
    return kept, replaced


def _saved_module_keys(adapter: AdapterFile) -> set[str]:
    """The file keys of modules a LoraConfig's `modules_to_save` names (the folder's config, or the file's
    metadata for any component)."""
    configs = [adapter.adapter_config or {}]
    raw = adapter.file_metadata.get(LORA_METADATA_KEY)
    try:
        metadata = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        metadata = {}  # said by normalize, which reads it again
    if isinstance(metadata, dict):
        configs.append({k.rpartition(".")[2]: v for k, v in metadata.items()})
    names = [name for config in configs for name in (config.get("modules_to_save") or [])]
    return {k for k in adapter.tensors if not is_tuner_parameter(k) and _saved_module(k, names) is not None}


def _saved_module(parameter: str, names: list[str]) -> str | None:
    parts = parameter.split(".")
    for end in range(1, len(parts)):
        module = ".".join(parts[:end])
        if any(module == name or module.endswith(f".{name}") for name in names):
            return module
    return None


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


def _has_role(peft_key: str, role: str) -> bool:
    """`…to_q.lora_A.weight`, or `…to_q.lora_magnitude_vector` as peft saves a magnitude."""
    return f".{role}." in peft_key or peft_key.endswith(f".{role}")


def _flatten_kohya_magnitudes(adapter: AdapterFile, state_dicts: dict, file_key_of: dict) -> None:
    """Kohya / LyCORIS DoRA keeps a magnitude per output channel as `dora_scale` [out, 1], peft as [out]: the same
    numbers, so hand peft a flat view, traced to the same file key. A [1, in] scale decomposes per input channel,
    which peft's DoRA does not do."""
    for state_dict in state_dicts.values():
        for key, tensor in list(state_dict.items()):
            if not _has_role(key, MAGNITUDE) or tensor.ndim != 2:
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


# A U-Net's top-level modules: a file naming them was saved from a U-Net, whatever the base is.
UNET_PARTS = ("down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding", "add_embedding")


def _names_a_unet(keys) -> bool:
    """A Kohya file of an SD U-Net (diffusers' names, or SGM's as sd-scripts writes SDXL): converted as SD's loaders
    do, whatever the base, so a wrong-family file is named for the family it was made for."""
    parts = tuple(
        f"lora_unet_{part}_"
        for part in (*UNET_PARTS, "input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb")
    )
    unet_keys = [key for key in keys if key.startswith("lora_unet_")]
    return bool(unet_keys) and all(key.startswith(parts) for key in unet_keys)


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


def _to_peft_keys(component: str, prefixed: dict, pipeline) -> dict[str, torch.Tensor]:
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


def _pattern_value(patterns: dict, module: str, default):
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(patterns.keys(), module)
    return patterns.get(key, default)
