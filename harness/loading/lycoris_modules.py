"""LyCORIS files applied by LyCORIS itself (`lycoris-lora`): every algo it writes, named as its Kohya network names
modules (`lora_unet_…`, `lora_te_…`, `lora_te1_…`/`lora_te2_…`, SDXL's SGM block names) or with its own `lycoris_`
prefix (its `create_lycoris` wrapper, SimpleTuner).

The harness finds the layer each file module names; LyCORIS tells the algo from the module's tensors and builds the
module (`lycoris.modules.get_module` / `make_module`, what its `create_network_from_weights` runs). The modules stay
off the base except while their adapter renders (`LycorisNetwork.active`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lora_harness.bases.families import denoiser_component
from lora_harness.bases.parameter_names import unwrapped_name
from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.forward_swap import forwards_swapped, watch_forward
from lora_harness.loading.kohya_names import KOHYA_COMPONENTS, SGM_BLOCKS, module_names

OWN_PREFIX = "lycoris_"  # LyCORIS's wrapper names the modules of the one model it wrapped: the denoiser
KOHYA_NAMED = "lycoris"  # results.json `format` of a LyCORIS file in Kohya's naming
PREFIXED = "lycoris-prefixed"  # and with LyCORIS's own prefix
LORA_ROLES = {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale"}  # a Kohya LoRA's: diffusers applies those
# The field's names for LyCORIS's module classes (`--network_args algo=…`).
ALGO_NAMES = {
    "LoConModule": "LoCon",
    "LohaModule": "LoHa",
    "LokrModule": "LoKr",
    "IA3Module": "(IA)³",
    "FullModule": "full",
    "NormModule": "norms",
    "DiagOFTModule": "Diag-OFT",
    "ButterflyOFTModule": "BOFT",
    "GLoRAModule": "GLoRA",
    "DyLoraModule": "DyLoRA",
    "TLoraModule": "TLoRA",
}
TUCKER_ROLES = ("lora_mid.weight", "hada_t1", "hada_t2", "lokr_t1", "lokr_t2")
# Where an algo scales by alpha / rank, the file role whose shape holds the rank, and that dimension (LyCORIS reads
# the rank there when it rebuilds a module). LoKr with both Kronecker factors full applies at 1 (no rank role).
RANK_ROLES = {
    "LoCon": (("lora_down.weight", 0),),
    "LoHa": (("hada_w1_b", 0),),
    "LoKr": (("lokr_w1_a", 1), ("lokr_w2_a", 1)),
    "GLoRA": (("a2.weight", 0),),
    "DyLoRA": (("lora_down.weight", 0),),
}
INTEGER_ROLES = ("alpha", "on_input")  # one number each: sd-scripts' DyLoRA alpha, (IA)³'s input-side flag


def _only_lycoris_roles() -> set[str]:
    from lycoris.modules import MODULE_LIST

    return {role for module in MODULE_LIST for role in module.weight_list} - LORA_ROLES


def is_lycoris_file(keys) -> bool:
    """A file only LyCORIS applies: its own prefix, or Kohya names with a tensor of an algo other than LoRA."""
    keys = list(keys)
    if not keys:
        return False
    if all(k.startswith(OWN_PREFIX) for k in keys):
        return True
    if not all(k.startswith(tuple(KOHYA_COMPONENTS)) for k in keys):
        return False
    roles = {k.partition(".")[2] for k in keys} - LORA_ROLES
    return bool(roles) and bool(roles & _only_lycoris_roles())  # a plain Kohya LoRA does not import LyCORIS


def lycoris_kind(keys) -> str | None:
    """The algos a Kohya-named file holds, by LyCORIS's own detection of each module ("LoKr", "LoCon+LoHa")."""
    from lycoris.modules import MODULE_LIST

    modules: dict[str, set[str]] = {}
    for key in keys:
        name, _, role = key.partition(".")
        modules.setdefault(name, set()).add(role)
    found = set()
    for roles in modules.values():
        algo = next((m for m in MODULE_LIST if any(r in roles for r in m.weight_list_det)), None)
        if algo is not None:
            found.add(ALGO_NAMES.get(algo.__name__, algo.__name__))
    return "+".join(sorted(found)) or None


@dataclass
class LycorisNetwork:
    """The modules LyCORIS built for one file, by "component.module", and how to put them on the base."""

    modules: dict[str, torch.nn.Module]

    def active(self, multiplier: float):
        """Each module's layer runs LyCORIS's forward at `multiplier` (the strength ComfyUI and A1111 give a
        LyCORIS), as LyCORIS's `apply_to` points it, then its own again. Not `apply_to` itself: LyCORIS Full's moves
        the layer's weight into the module and restores it as a new parameter, which would change the base."""
        for module in self.modules.values():
            module.multiplier = multiplier
            module.org_forward = module.org_module[0].forward
        return forwards_swapped([(module.org_module[0], module) for module in self.modules.values()])

    def watch(self, name: str, mark):
        """A forward hook on the module's layer that calls `mark` when the layer ran LyCORIS's forward."""
        module = self.modules[name]
        return watch_forward(module.org_module[0], module, mark)


@dataclass(frozen=True)
class LycorisFactors:
    """What weight_health reads of one LyCORIS module (or peft LoHa or LoKr layer): the file's tensors by role, the declared scale, and the
    module itself, whose ΔW LyCORIS computes for the algos without a cheaper structure."""

    roles: dict[str, torch.Tensor]
    scale: float
    module: torch.nn.Module
    algo: str


@dataclass
class BuiltNetwork:
    network: LycorisNetwork
    file_names: dict[str, str]  # "component.module" -> the module's name in the file
    algos: dict[str, str]  # "component.module" -> the algo as the field names it ("LoKr", "LoCon (Tucker)")
    unmatched: list[tuple[str, str, list[str]]] = field(default_factory=list)  # file key, module, nearest
    refused: list[tuple[str, str]] = field(default_factory=list)  # file key, why LyCORIS could not build its module


def file_modules(adapter: AdapterFile) -> dict[str, dict[str, torch.Tensor]]:
    """{file module name: {role: tensor}}: LyCORIS names a module without dots, its tensors after the first one."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.tensors.items():
        name, _, role = key.partition(".")
        if not role:
            raise AdapterLoadError(
                f"{adapter.weights_path}: key `{key}` names no tensor of a module (LyCORIS writes `<module>.<tensor>`); "
                "the file was written wrongly, export it again"
            )
        if not tensor.is_floating_point() and not (role in INTEGER_ROLES and tensor.numel() == 1):
            raise AdapterLoadError(
                f"{adapter.weights_path}: tensor {key} holds {tensor.dtype}, but LyCORIS weights are floating point; "
                "the file was written wrongly, export it again"
            )
        modules.setdefault(name, {})[role] = tensor
    return modules


def build_network(pipeline, modules: dict[str, dict[str, torch.Tensor]]) -> BuiltNetwork:
    """LyCORIS's modules for every file module (`file_modules`) whose layer the base has; the rest named with the
    nearest layers."""
    import difflib

    prefixed = all(name.startswith(OWN_PREFIX) for name in modules)
    names = _sgm_to_diffusers(pipeline, modules) if not prefixed else {n: n for n in modules}
    layers = _layers_by_file_name(pipeline, prefixed)
    built, file_names, algos, unmatched, refused = {}, {}, {}, [], []
    for file_name, roles in modules.items():
        keys = [f"{file_name}.{role}" for role in roles]
        found = layers.get(names[file_name])
        if found is None:
            nearest = difflib.get_close_matches(names[file_name], list(layers), n=3, cutoff=0.6)
            unmatched += [(key, names[file_name], nearest) for key in keys if not key.endswith(".alpha")]
            continue
        component, path, layer = found
        module, algo, why = _make_module(file_name, roles, layer)
        if module is None:
            refused += [(key, why) for key in keys if not key.endswith(".alpha")]
            continue
        parameter = next(layer.parameters(), None)
        if parameter is not None:  # built on the CPU in float32: computed where and as the base is (`--dtype`)
            module.to(parameter.device, parameter.dtype)
        qualified = f"{component}.{path}"
        built[qualified], file_names[qualified], algos[qualified] = module, file_name, algo
    return BuiltNetwork(LycorisNetwork(built), file_names, algos, unmatched, refused)


def _make_module(file_name: str, roles: dict[str, torch.Tensor], layer):
    """(module, algo, None) or (None, None, why), as LyCORIS builds it from the module's tensors."""
    from lycoris.modules import IA3Module, LokrModule, get_module, make_module

    state = {f"{file_name}.{role}": tensor for role, tensor in roles.items()}
    algo_class, params = get_module(state, file_name)
    if algo_class is None:
        return None, None, f"no LyCORIS algo has tensors named {', '.join(sorted(roles))}"
    algo = ALGO_NAMES.get(algo_class.__name__, algo_class.__name__)
    try:
        if algo_class is IA3Module:
            # LyCORIS 4.1's IA3Module.make_module_from_state_dict takes only `weight` (its weight_list also names
            # `on_input`), so its own loader raises a TypeError: the same construction, with the side the file trained.
            module = IA3Module(file_name, layer, 1, train_on_input=bool(roles.get("on_input", 0)))
            module.weight.data.copy_(roles["weight"])
        elif algo_class is LokrModule:
            module = _lokr_module(file_name, roles, layer, params)
        else:
            module = make_module(algo_class, params, file_name, layer)
    except (RuntimeError, ValueError, TypeError, AssertionError) as error:
        kind = type(layer).__name__
        return None, None, f"LyCORIS could not build its {algo} module on this {kind} ({type(error).__name__}: {error})"
    if module is None:
        return None, None, f"LyCORIS cannot rebuild a {algo} module from a file"
    extras = [
        label
        for label, present in (("Tucker", any(r in roles for r in TUCKER_ROLES)), ("DoRA", "dora_scale" in roles))
        if present
    ]
    return module, algo + (f" ({', '.join(extras)})" if extras else ""), None


LOKR_FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _lokr_module(file_name: str, roles: dict[str, torch.Tensor], layer, params):
    """LyCORIS's LoKr module for the file module, as its loader builds it; where that constructor picks other factor
    shapes than the file stores (it puts the smaller Kronecker factor first, LyCORIS versions before 4 stored the
    other order), one holding the file's factors as stored."""
    from lycoris.modules import LokrModule

    try:
        built = LokrModule.make_module_from_state_dict(file_name, layer, *params)
    except (RuntimeError, AttributeError):  # its copy of a stored factor into a parameter of another shape or kind
        return _lokr_on_stored_factors(file_name, roles, layer)
    if all(getattr(built, role).shape == roles[role].shape for role in LOKR_FACTORS if role in roles):
        return built
    return _lokr_on_stored_factors(file_name, roles, layer)


def _lokr_on_stored_factors(file_name: str, roles: dict[str, torch.Tensor], layer):
    """A LyCORIS LoKr module holding the file's factors as stored, so its forward adds kron(w1, w2) (w1 = w1_a · w1_b
    and w2 = w2_a · w2_b where decomposed, w2 through t2 for Tucker) as ComfyUI and AUTOMATIC1111 compute it from
    such a file, at the file's alpha / rank (1 where both factors are full, as LyCORIS scales those)."""
    from lycoris.modules import LokrModule

    factor_rank = next((roles[r].shape[1] for r in ("lokr_w1_a", "lokr_w2_a") if r in roles), None)
    module = LokrModule(file_name, layer, 1, factor_rank or 1, weight_decompose="dora_scale" in roles)
    for role in LOKR_FACTORS:
        if hasattr(module, role):
            delattr(module, role)
    for role, tensor in roles.items():
        if role in LOKR_FACTORS or role == "dora_scale":
            setattr(module, role, torch.nn.Parameter(tensor.float().clone(), requires_grad=False))
    module.use_w1, module.use_w2, module.tucker = "lokr_w1" in roles, "lokr_w2" in roles, "lokr_t2" in roles
    stored_alpha = float(roles["alpha"]) if "alpha" in roles else 0.0
    rank = factor_rank or 1
    alpha = rank if factor_rank is None or stored_alpha == 0 else stored_alpha
    module.scale = alpha / rank
    module.alpha.fill_(alpha)
    return module


def landed_tensors(module) -> dict[str, torch.Tensor]:
    """What the module holds, in the file's roles (LyCORIS's own save layout, `custom_state_dict`). LyCORIS Full's
    save layout subtracts a weight its `apply_to` folds in, which this harness never calls: its diff is `weight`."""
    from lycoris.modules import FullModule

    if isinstance(module, FullModule) and module.is_diff:
        landed = {"diff": module.weight}
        if module.bias is not None:
            landed["diff_b"] = module.bias
        return landed
    return dict(module.state_dict())


def declared_rank(algo: str, roles: dict[str, torch.Tensor]) -> tuple[bool, int | None]:
    """(whether the algo scales by alpha / rank, the rank its tensors' shapes hold): (IA)³, OFT, full and norms apply
    at LyCORIS's multiplier alone; a LoKr whose Kronecker factors are both full has no rank and applies at 1."""
    base_algo = algo.split(" ")[0]
    if base_algo not in RANK_ROLES:
        return False, None
    return True, next((int(roles[r].shape[d]) for r, d in RANK_ROLES[base_algo] if r in roles), None)


def sgm_names_in(modules) -> bool:
    return any(name.startswith(SGM_BLOCKS) for name in modules)


def _sgm_to_diffusers(pipeline, modules: dict[str, dict]) -> dict[str, str]:
    """file module name -> its name in diffusers' U-Net. sd-scripts trains SDXL on its own U-Net, named after SGM's
    blocks (`lora_unet_input_blocks_4_1_…`); diffusers' own mapping (`_maybe_map_sgm_blocks_to_diffusers`, what
    `lora_state_dict(…, unet_config=…)` runs) renumbers the blocks by the base's layout, whatever the tensors'
    roles, and `SGM_NAMES` then spells the SGM parts as diffusers' Kohya conversion (`_convert_unet_lora_key`) does."""
    names = {name: name for name in modules}
    unet = getattr(pipeline, "unet", None)
    if unet is None or not sgm_names_in(modules):
        return names
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    # One marker tensor per module, traced by identity through the renaming (it renames keys, never copies).
    markers = {name: torch.empty(0) for name in modules}
    by_marker = {id(marker): name for name, marker in markers.items()}
    renamed = _maybe_map_sgm_blocks_to_diffusers({f"{n}.lora_down.weight": m for n, m in markers.items()}, unet.config)
    for key, marker in renamed.items():
        name = key.partition(".")[0]
        for sgm, diffusers in SGM_NAMES:
            name = name.replace(sgm, diffusers)
        names[by_marker[id(marker)]] = name
    return names


# The SGM spellings diffusers' block mapping leaves, in order: the blocks' own names, then a resnet's layers, the
# samplers' convolutions, and the modules outside the blocks (sd-scripts' `library/sdxl_original_unet.py`).
SGM_NAMES = (
    ("lora_unet_input_blocks_0_0", "lora_unet_conv_in"),
    ("lora_unet_out_2", "lora_unet_conv_out"),
    ("lora_unet_time_embed_0", "lora_unet_time_embedding_linear_1"),
    ("lora_unet_time_embed_2", "lora_unet_time_embedding_linear_2"),
    ("lora_unet_label_emb_0_0", "lora_unet_add_embedding_linear_1"),
    ("lora_unet_label_emb_0_2", "lora_unet_add_embedding_linear_2"),
    ("lora_unet_input_blocks_", "lora_unet_down_blocks_"),
    ("lora_unet_middle_block_", "lora_unet_mid_block_"),
    ("lora_unet_output_blocks_", "lora_unet_up_blocks_"),
    ("_in_layers_2", "_conv1"),
    ("_out_layers_3", "_conv2"),
    ("_emb_layers_1", "_time_emb_proj"),
    ("_skip_connection", "_conv_shortcut"),
    ("_downsamplers_0_op", "_downsamplers_0_conv"),
)


def _layers_by_file_name(pipeline, prefixed: bool) -> dict[str, tuple[str, str, torch.nn.Module]]:
    """File module name -> (component, module path, the module) for every module of the components the file can
    name: a module another adapter wrapped is found as its innermost base layer, under its own name."""

    if prefixed:
        component = denoiser_component(pipeline)
        prefixes = {OWN_PREFIX: component}
    else:
        prefixes = KOHYA_COMPONENTS
    found = {}
    for prefix, component_name in prefixes.items():
        component = getattr(pipeline, component_name, None)
        if component is None or (prefix == "lora_te_" and getattr(pipeline, "text_encoder_2", None) is not None):
            continue  # SDXL's text encoders are lora_te1_ / lora_te2_
        for name, module in component.named_modules():
            path = unwrapped_name(name)
            if not path or (path != name and not name.endswith("base_layer")):
                continue
            for spelled in module_names(component_name, prefix, [path]):
                found[spelled] = (component_name, path, module)
    return found
