"""The path every kind that injects through diffusers' per-component loaders shares: its normalized file checked
against the base (family, ranks, targets, shapes), injected into peft layers, and proven by the kind's own proof
(`proof.by_tensors`, `by_updates`, or a kind's own); its `modules_to_save` replace whole modules beside it.
`PeftOnBase` is how such an adapter is switched on, watched and taken off."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lora_harness.bases.families import WIDTH_MODULES, Signature, is_denoiser, keys_signature
from lora_harness.bases.parameter_names import TUNER_PARAMETERS, is_tuner_parameter, unwrapped_name
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError, FamilyMismatch
from lora_harness.loading.application import DROPPED, Application, describe_unmatched
from lora_harness.loading.experts import onto_expert
from lora_harness.loading.normalized import LAYER_TYPES, LORA_BIAS, MAGNITUDE, NormalizedAdapter, Target, layer_modules
from lora_harness.loading.proof import Proven, most_common, roles_by_module, same_values, tensor_facts
from lora_harness.loading.replaced_modules import ReplacedModules, build_replacements
from lora_harness.loading.traced_kronecker import BAKED, KRONECKER, kronecker_shape

# A kind's proof: (adapter, normalized, the layers injected by "component.module", adapter name, file keys refused
# before injection) -> what was found in them.
Proof = Callable[[AdapterFile, NormalizedAdapter, dict, str, set], Proven]
# A kind's own shape rule beyond a layer's in and out widths: (pipeline, normalized, keys accepted so far) -> the
# (file key, expected, found) it refuses.
ShapeRule = Callable[[object, NormalizedAdapter, set], list]


def apply_normalized(
    pipeline,
    base_signature: Signature,
    adapter: AdapterFile,
    normalized: NormalizedAdapter,
    adapter_name: str,
    prove: Proof,
    shape_rule: ShapeRule | None = None,
) -> Application:
    _check_rank_pairs(adapter, normalized)
    # The family first: another family's modules are missing from this base, and saying whose they are is the fix.
    adapter_signature = _signature(normalized, base_signature)
    family = adapter_signature.family if adapter_signature else "unknown"
    if adapter_signature is not None and adapter_signature != base_signature:
        raise FamilyMismatch(adapter.weights_path, adapter_signature, base_signature)
    normalized = onto_expert(normalized, adapter, pipeline)
    _check_config_targets(pipeline, adapter, normalized)
    _refuse_base_rewriting_init(adapter, normalized)
    accepted, unmatched, shape_mismatches = _validate_targets(pipeline, normalized)
    if shape_rule is not None:
        refused = shape_rule(pipeline, normalized, accepted)
        shape_mismatches += refused
        accepted -= {key for key, *_ in refused}
    lora_modules = {target.qualified_module for target in normalized.targets.values()}
    replaced, saved_unmatched, saved_shapes = build_replacements(pipeline, adapter, normalized.replaced, lora_modules)
    unmatched, shape_mismatches = unmatched + saved_unmatched, shape_mismatches + saved_shapes
    if not accepted and not replaced.modules:
        raise AdapterLoadError(
            f"{adapter.weights_path}: none of its {len(normalized.tensor_keys)} LoRA tensors matches a module of the "
            f"base; {describe_unmatched(unmatched, shape_mismatches)}"
        )
    try:
        with warnings.catch_warnings():
            # Several adapters share the base on purpose (one pipeline, no copies); peft warns about each.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            try:
                inject(pipeline, normalized, accepted, adapter_name)
            except (ValueError, RuntimeError, TypeError, KeyError) as error:
                # What reaches here passed our own validation; diffusers or peft still refused it.
                raise AdapterLoadError(
                    f"{adapter.weights_path}: diffusers could not inject it ({type(error).__name__}: {error}); "
                    "check that the file is a LoRA for this base, or export it again"
                ) from None
        application = _prove(pipeline, adapter, normalized, adapter_name, family, unmatched, shape_mismatches, prove)
        if replaced.modules:
            _prove_replaced(application, adapter, replaced)
    except BaseException:
        remove_adapter(pipeline, adapter_name)  # a half-made injection leaves no layer or adapter name behind
        raise
    application.architecture = base_signature.architecture
    application.on_base = PeftOnBase(pipeline, adapter_name, application.replaced)
    return application


def remove_adapter(pipeline, adapter_name: str) -> None:
    """Take one adapter's layers and name out of every component; with no adapter left, the peft wrappers too."""
    with warnings.catch_warnings():  # peft says which adapter it activates instead: none is meant to be
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
        pipeline.delete_adapters(adapter_name)
    if not any(pipeline.get_list_adapters().values()):
        pipeline.unload_lora_weights()


@dataclass
class PeftOnBase:
    """An adapter in peft's layers: on by diffusers' `set_adapters` with the scale in the pipeline's call, its
    `modules_to_save` swapped in beside it; off by taking its layers out of every component."""

    pipeline: object
    adapter_name: str
    replaced: ReplacedModules | None = None
    scale_in_call: bool = True

    @contextlib.contextmanager
    def active(self, scale: float):
        self.pipeline.set_adapters([self.adapter_name])
        with self.replaced.active(scale) if self.replaced is not None else contextlib.nullcontext():
            yield

    def watch(self, name: str, layer: torch.nn.Module, mark: Callable[[], None]):
        if self.replaced is not None and name in self.replaced.modules:
            return self.replaced.watch(name, mark)
        return watch_layer(layer, self.adapter_name, mark)

    def remove(self) -> None:
        remove_adapter(self.pipeline, self.adapter_name)


@contextlib.contextmanager
def peft_layers_off(pipeline):
    """Every adapter in peft's layers off inside the block (the base renders as it is, or another kind's adapter
    does alone)."""
    if not any(pipeline.get_list_adapters().values()):
        yield
        return
    pipeline.disable_lora()
    try:
        yield
    finally:
        pipeline.enable_lora()


def watch_layer(layer, adapter_name: str, mark: Callable[[], None]):
    """Call `mark` when the adapter's own computation runs in `layer`: LoRA's A projection; a LoKr layer, whose
    factors are parameters and no module of their own, when it runs with the adapter active."""
    if adapter_name in getattr(layer, "lora_A", {}):
        return layer.lora_A[adapter_name].register_forward_hook(lambda *_: mark())

    def ran(module, *_):
        if adapter_name in module.active_adapters and not module.disable_adapters:
            mark()

    return layer.register_forward_hook(ran)


# peft (0.21) initialisations that rewrite the base layer's weight when the layer is built: to a residual
# W - B·A, which peft's save_pretrained can convert back to a LoRA for W, or (LoftQ) to a quantized W, which it
# cannot. EVA is not here: it only zeroes B at build time, so an EVA adapter is a LoRA for the original base.
CONVERTIBLE_INITS = ("pissa", "olora", "corda", "lora_ga")
QUANTIZING_INITS = ("loftq",)


def _refuse_base_rewriting_init(adapter: AdapterFile, normalized: NormalizedAdapter) -> None:
    """Loading such an adapter as saved makes peft run its initialisation again on the base under test."""
    for config in normalized.lora_configs.values():
        init = config.get("init_lora_weights")
        kind = init.lower().split("_niter_")[0] if isinstance(init, str) else None
        if kind not in CONVERTIBLE_INITS + QUANTIZING_INITS:
            continue
        where = adapter.path / "adapter_config.json" if adapter.adapter_config is not None else adapter.weights_path
        if kind in QUANTIZING_INITS:
            raise AdapterLoadError(
                f"{where}: saved with init_lora_weights={init!r}: it only works on the quantized base LoftQ made, and "
                "loading it would rewrite this base's weights (it was not loaded); peft's conversion "
                "(`path_initial_model_for_weight_conversion`) covers PiSSA, CorDA, OLoRA and LoRA-GA, not LoftQ: "
                "check it on the quantized base it was trained with"
            )
        raise AdapterLoadError(
            f"{where}: saved with init_lora_weights={init!r} without conversion, so it only works on its residual "
            "base (the base minus its initial B·A), and loading it would make peft rewrite this base's weights (it "
            "was not loaded); save it with peft's conversion, `save_pretrained(..., "
            "path_initial_model_for_weight_conversion=DIR)` (DIR: the adapter saved right after initialisation), "
            "which turns it into a LoRA for the original base"
        )


def _check_config_targets(pipeline, adapter: AdapterFile, normalized: NormalizedAdapter) -> None:
    """A PEFT config whose `target_modules` name modules the base lacks cannot be what was trained on it."""
    for component_name, config in normalized.lora_configs.items():
        targets = config.get("target_modules")
        component = getattr(pipeline, component_name, None)
        if not isinstance(targets, (list, tuple, set)) or component is None:
            continue  # a regex string, or no such component (reported as unmatched keys)
        names = [name for name, _ in component.named_modules()]
        missing = sorted(t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names))
        if missing:
            where = adapter.path / "adapter_config.json" if adapter.adapter_config is not None else adapter.weights_path
            raise AdapterLoadError(
                f"{where}: target_modules names modules the base's {component_name} lacks: {', '.join(missing[:5])}; "
                "the adapter was made for another model, or its config was edited by hand"
            )


def _validate_targets(pipeline, normalized: NormalizedAdapter):
    """Split the file's traced tensors into those whose module exists with matching shapes and the rest."""
    accepted: set[str] = set()
    unmatched, shape_mismatches = [], []
    layer_names: dict[str, list[str]] = {}  # per component, listed once however many keys miss
    for key, target in normalized.targets.items():
        component = getattr(pipeline, target.component, None)
        module = find_module(component, target.module)
        if module is None:
            if target.component not in layer_names:
                layer_names[target.component] = _layer_names(component)
            nearest = difflib.get_close_matches(target.module, layer_names[target.component], n=3, cutoff=0.6)
            unmatched.append((key, target.qualified_module, nearest))
            continue
        tensor = normalized.tensors[key]
        expected = _expected_shape(module, target.role, tensor)
        flux_module = normalized.flux_modules.get(target.qualified_module)
        if flux_module is not None:  # a fused module's update fills the rows of all its layers
            layers = [find_module(component, layer) for layer in flux_module.layers]
            missing = [layer for layer, found in zip(flux_module.layers, layers) if found is None]
            if missing:
                unmatched.append((key, f"{target.component}.{missing[0]}", []))
                continue
            if target.role == "lora_B":
                expected = (sum(layer.out_features for layer in layers), tensor.shape[1])
        if tuple(tensor.shape) != expected:
            shape_mismatches.append((key, expected, tuple(tensor.shape)))
            continue
        accepted.add(key)
    for flux_module in normalized.flux_modules.values():  # half a module would land without its partner
        if not {flux_module.down, flux_module.up} <= accepted:
            accepted -= {flux_module.down, flux_module.up}
    unmatched += [(key, DROPPED, []) for key in normalized.untraced]
    return accepted, unmatched, shape_mismatches


def _check_rank_pairs(adapter: AdapterFile, normalized: NormalizedAdapter) -> None:
    """A module's down (A) and up (B) matrices must share one rank, or no loader can apply them."""
    pairs: dict[str, dict[str, tuple[str, int]]] = {}
    for key, target in normalized.targets.items():
        if target.role not in ("lora_A", "lora_B"):
            continue
        tensor = normalized.tensors[key]
        rank = tensor.shape[0] if target.role == "lora_A" else tensor.shape[1]
        pairs.setdefault(target.qualified_module, {})[target.role] = (key, int(rank))
    broken = [
        (m, p["lora_A"], p["lora_B"]) for m, p in pairs.items() if len(p) == 2 and p["lora_A"][1] != p["lora_B"][1]
    ]
    unpaired = [m for m, p in pairs.items() if len(p) == 1]
    if broken:
        module, (down, down_rank), (up, up_rank) = broken[0]
        raise AdapterLoadError(
            f"{adapter.weights_path}: down and up ranks disagree in {len(broken)} modules, first {module}: "
            f"{down} has rank {down_rank}, {up} has rank {up_rank}; the file is damaged, export it again"
        )
    if unpaired:
        raise AdapterLoadError(
            f"{adapter.weights_path}: {len(unpaired)} modules have a down or an up matrix but not both, first "
            f"{unpaired[0]}; the file is incomplete, export it again"
        )


def _expected_shape(module: torch.nn.Module, role: str, tensor: torch.Tensor) -> tuple:
    conv = isinstance(module, torch.nn.Conv2d)
    out_dim = module.out_channels if conv else module.out_features
    if role == MAGNITUDE:  # one magnitude per output channel of the adapted weight (Kohya: as a column)
        return (out_dim,) if tensor.ndim == 1 else (out_dim, 1)
    if role == LORA_BIAS:
        return (out_dim,)
    if KRONECKER.lstrip(".") in role:  # a Kronecker factor's shape is the module's choice: checked per module
        return tuple(tensor.shape)
    if isinstance(module, torch.nn.Conv2d):
        if role == "lora_A":
            return (tensor.shape[0], module.in_channels, *tensor.shape[2:])
        return (module.out_channels, tensor.shape[1], *tensor.shape[2:])
    if role == "lora_A":
        return (tensor.shape[0], module.in_features)
    return (module.out_features, tensor.shape[1])


def _signature(normalized: NormalizedAdapter, base: Signature) -> Signature | None:
    """The family the adapter's denoiser keys were made for, from the width its width-reading modules take (a
    U-Net's cross-attention keys read the text width, which tells SD1.x from SD2.x and SDXL; a transformer's
    queries its inner width)."""
    targets = normalized.targets.values()
    modules = roles_by_module(normalized)
    widths = Counter()
    for target in targets:
        reads_width = target.module.endswith(WIDTH_MODULES.get(target.component, ()))
        width = _input_width(target, modules[target.qualified_module]) if reads_width else None
        if width is not None:
            widths[(target.component, width)] += 1
    if not widths:
        return None
    component, width = widths.most_common(1)[0][0]
    return keys_signature(component, width, [t.module for t in targets if t.component == component], base)


def _input_width(target: Target, roles: dict[str, torch.Tensor]) -> int | None:
    """The input width a module's adapter tensors (`roles`, by role) read, counted once per module (at its down
    matrix, a LoKr module's at w1: kron(w1, w2)'s columns)."""
    if target.role == "lora_A":
        return int(roles["lora_A"].shape[1])
    if target.role in BAKED:
        return kronecker_shape(roles)[1]
    return None


def inject(pipeline, normalized: NormalizedAdapter, accepted: set[str], adapter_name: str) -> None:
    for component, state_dict in normalized.state_dicts.items():
        kept = {k: v for k, v in state_dict.items() if normalized.file_keys.get((component, k)) in accepted}
        if not kept:
            continue
        prefixed = {f"{component}.{k}": v for k, v in kept.items()}
        config = normalized.lora_configs.get(component)
        metadata = {f"{component}.{k}": v for k, v in config.items()} if config else None
        alphas = None if metadata else normalized.network_alphas
        if is_denoiser(component):  # the denoiser loads its own keys
            getattr(pipeline, component).load_lora_adapter(
                prefixed, prefix=component, adapter_name=adapter_name, network_alphas=alphas, metadata=metadata
            )
        else:
            pipeline.load_lora_into_text_encoder(
                prefixed,
                network_alphas=alphas,
                text_encoder=getattr(pipeline, component),
                prefix=component,
                adapter_name=adapter_name,
                metadata=metadata,
            )


def _prove(
    pipeline, adapter, normalized, adapter_name, family, unmatched, shape_mismatches, prove: Proof
) -> Application:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers: dict[str, torch.nn.Module] = {}
    lora_params = 0
    for component_name in normalized.state_dicts:
        component = getattr(pipeline, component_name)
        for name, module in component.named_modules():
            if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "scaling", {}):
                layers[f"{component_name}.{unwrapped_name(name)}"] = module
        lora_params += sum(
            p.numel()
            for n, p in component.named_parameters()
            if is_tuner_parameter(n) and f".{adapter_name}." in f"{n}."
        )

    scales = {name: float(layer.scaling[adapter_name]) for name, layer in layers.items()}
    proven = prove(adapter, normalized, layers, adapter_name, {key for key, *_ in unmatched + shape_mismatches})
    scales.update(proven.measured)
    rtol = proven.tolerance
    scale_mismatches = [
        (name, normalized.expected_scales[name], scales[name])
        for name in scales
        if name in normalized.expected_scales
        and not torch.isclose(torch.tensor(scales[name]), torch.tensor(normalized.expected_scales[name]), rtol=rtol)
    ]
    ups = [key for key, target in normalized.targets.items() if target.role == "lora_B"]
    return Application(
        adapter_name=adapter_name,
        format=normalized.format,
        family=family,
        **tensor_facts(adapter, normalized.tensor_keys),
        tensors_applied=proven.applied,
        lora_params=lora_params,
        file_module_params=_file_module_params(adapter, normalized),
        rank=most_common(normalized.ranks.values()),
        alpha=most_common(normalized.alphas.values()),
        scale=most_common(scales.values()),
        scales=scales,
        unmatched=unmatched,
        shape_mismatches=shape_mismatches,
        value_mismatches=proven.mismatches,
        scale_mismatches=scale_mismatches,
        zero_up=[key for key in ups if not adapter.tensors[key].any()],
        up_tensors=len(ups),
        lora_layers=layers,
        layer_params={name: _own_parameters(layer, adapter_name) for name, layer in layers.items()},
        factors=_factors(normalized),
        lycoris_factors=proven.lycoris_factors,
        ranks=sorted(set(normalized.ranks.values())),
        alphas=sorted(set(normalized.alphas.values())),
        dora_modules=sum(target.role == MAGNITUDE for target in normalized.targets.values()),
        kind=normalized.kind,
    )


def _own_parameters(layer: torch.nn.Module, adapter_name: str) -> int:
    """A peft layer holds every adapter's parameters: this one's."""
    return sum(
        p.numel()
        for n, p in layer.named_parameters()
        if n.startswith(TUNER_PARAMETERS) and f".{adapter_name}." in f".{n}."
    )


def _prove_replaced(application: Application, adapter: AdapterFile, replaced: ReplacedModules) -> None:
    """Each saved parameter found, with its value, in the module that replaces the base's while the adapter renders;
    the replaced modules are watched and counted with the adapter's layers."""
    for name, (original, twin) in replaced.modules.items():
        held = dict(twin.named_parameters())
        for parameter, key in replaced.file_keys[name].items():
            if same_values(held[parameter], adapter.tensors[key]):
                application.tensors_applied += 1
            else:
                application.value_mismatches.append(key)
        application.lora_layers[name] = original
        application.layer_params[name] = sum(p.numel() for p in twin.parameters())
    application.lora_params += replaced.parameters
    application.replaced = replaced


def _file_module_params(adapter: AdapterFile, normalized: NormalizedAdapter) -> dict[str, int]:
    """A converted file's own parameters by the layer each module (or bias difference) lands on first."""
    params = {
        name: adapter.tensors[module.down].numel() + adapter.tensors[module.up].numel()
        for name, module in normalized.flux_modules.items()
    }
    if params:
        for key, target in normalized.targets.items():
            if target.role == LORA_BIAS:
                params[target.qualified_module] = params.get(target.qualified_module, 0) + adapter.tensors[key].numel()
    return params


def _factors(normalized: NormalizedAdapter) -> dict[str, tuple]:
    """The file's own down and up matrices per module, with the scale the file declares for it."""
    return {
        _file_module_name(normalized, module): (
            roles["lora_A"],
            roles["lora_B"],
            normalized.expected_scales.get(module, 1.0),
        )
        for module, roles in roles_by_module(normalized).items()
        if "lora_A" in roles and "lora_B" in roles
    }


def _file_module_name(normalized: NormalizedAdapter, module: str) -> str:
    """A fused Flux module is named by all the layers it fills."""
    flux_module = normalized.flux_modules.get(module)
    return module if flux_module is None else flux_module.name


def find_module(component, path: str):
    if component is None:
        return None
    try:
        module = component.get_submodule(path)
    except AttributeError:
        return None
    while getattr(module, "base_layer", None) is not None:  # wrapped by other adapters, of any kind
        module = module.base_layer
    return module if isinstance(module, LAYER_TYPES) else None


def _layer_names(component) -> list[str]:
    return [] if component is None else list(layer_modules(component))
