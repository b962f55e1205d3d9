"""LyCORIS LoHa and LoKr files in Kohya's naming, brought to peft's own tuners (`LoHaConfig`, `LoKrConfig`).

diffusers has no loader for them, so the harness maps each Kohya module name back to the base's module (Kohya
names a module by its path with dots as underscores), builds the peft config that gives every layer the
file's shapes and scale, injects it with peft and loads the values with peft's `set_peft_model_state_dict`.
LyCORIS and peft share the tensor names (`hada_w1_a`, `lokr_w1`, ...), their shapes and the scale alpha / rank.
"""

from __future__ import annotations

import torch

from .adapter_file import AdapterFile, AdapterLoadError

LOHA = "LoHa"
LOKR = "LoKr"
ROLES = {
    LOHA: ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    LOKR: ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}
KOHYA_COMPONENTS = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}


def lycoris_kind(keys) -> str | None:
    keys = list(keys)
    if any(k.endswith(".hada_w1_a") for k in keys):
        return LOHA
    if any(k.endswith((".lokr_w1", ".lokr_w1_a")) for k in keys):
        return LOKR
    return None


def module_names(component: str, prefix: str, layer_names) -> dict[str, str]:
    """Kohya name -> module path, for every layer of `component`. A CLIP text encoder's layers are named both as
    transformers 4 had them (`text_model.encoder…`, most published files) and as the loaded model has them."""
    names = {}
    for name in layer_names:
        paths = {name}
        if component != "unet":
            paths.add(name if name.startswith("text_model.") else f"text_model.{name}")
        names.update({prefix + path.replace(".", "_"): name for path in paths})
    return names


def split_file(adapter: AdapterFile, kind: str):
    """{kohya module: {role: tensor}} and {kohya module: alpha}; anything else in the file is an error."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, tensor in adapter.tensors.items():
        module, _, role = key.rpartition(".")
        if role == "alpha":
            alphas[module] = float(tensor)
        elif role in ROLES[kind]:
            modules.setdefault(module, {})[role] = tensor
        elif role == "dora_scale":
            raise AdapterLoadError(
                f"{adapter.weights_path}: a LyCORIS {kind} with DoRA weight decomposition (`{key}`); peft's {kind} has no "
                "DoRA, so it cannot be applied as trained"
            )
        else:
            raise AdapterLoadError(
                f"{adapter.weights_path}: a LyCORIS {kind} file with a `{key}` tensor that {kind} does not have; "
                "a file mixing adapter kinds cannot be checked as one, export each kind on its own"
            )
    return modules, alphas


def rank_and_alpha(kind: str, roles: dict[str, torch.Tensor], alpha: float | None) -> tuple[int, float]:
    """The (r, alpha) that make peft build this module's tensors with these shapes and LyCORIS's scale."""
    if kind == LOHA:
        rank = int(roles["hada_w1_b"].shape[0])
        return rank, alpha if alpha is not None else float(rank)
    decomposed = roles.get("lokr_w1_a", roles.get("lokr_w2_a"))
    if decomposed is None:
        # Both factors full: LyCORIS applies them at scale 1 and stores its rank as alpha. peft keeps w2 full for any r
        # of at least half its larger side, which that rank is unless full-matrix mode was forced.
        smallest_full = (max(roles["lokr_w2"].shape[:2]) + 1) // 2
        rank = int(alpha) if alpha is not None and alpha >= smallest_full else smallest_full
        return rank, float(rank)
    rank = int(decomposed.shape[1])
    return rank, alpha if alpha is not None else float(rank)


def lokr_options(
    adapter: AdapterFile, modules: dict[str, dict[str, torch.Tensor]], layers: dict[str, torch.nn.Module]
) -> dict:
    """LoKrConfig's file-wide choices: whether w1 is decomposed too, and the factor that splits each dimension."""
    from peft.tuners.lokr.layer import factorization

    w1_shapes = {}
    for module, roles in modules.items():
        if "lokr_w1" in roles:
            w1_shapes[module] = tuple(roles["lokr_w1"].shape[:2])
        else:
            w1_shapes[module] = (roles["lokr_w1_a"].shape[0], roles["lokr_w1_b"].shape[1])

    def dimensions(layer):
        if isinstance(layer, torch.nn.Conv2d):
            return layer.out_channels, layer.in_channels
        return layer.out_features, layer.in_features

    candidates = [-1] + sorted({d for shape in w1_shapes.values() for d in shape})
    for factor in candidates:
        if all(
            (factorization(dimensions(layers[m])[0], factor)[0], factorization(dimensions(layers[m])[1], factor)[0])
            == shape
            for m, shape in w1_shapes.items()
        ):
            return {
                "decompose_both": any("lokr_w1_a" in roles for roles in modules.values()),
                "decompose_factor": factor,
            }
    raise AdapterLoadError(
        f"{adapter.weights_path}: its LoKr factors do not split the base's layers the way any single factor does "
        "(peft's LoKrConfig takes one decompose_factor per adapter); it was made for another base, or with per-layer factors"
    )


def peft_config(kind: str, targets: dict[str, tuple[int, float]], options: dict):
    """A LoHaConfig / LoKrConfig naming each module exactly, with its own rank and alpha."""
    from peft import LoHaConfig, LoKrConfig

    # Patterns match as regex suffixes: escape the dots so each names exactly one module.
    ranks = {m.replace(".", r"\."): r for m, (r, _) in targets.items()}
    alphas = {m.replace(".", r"\."): a for m, (_, a) in targets.items()}
    config_class = LoHaConfig if kind == LOHA else LoKrConfig
    first_rank, first_alpha = next(iter(targets.values()))
    return config_class(
        r=first_rank,
        alpha=first_alpha,
        target_modules=sorted(targets),
        rank_pattern=ranks,
        alpha_pattern=alphas,
        **options,
    )


def inject(component_module, config, state_dict: dict[str, torch.Tensor], adapter_name: str) -> None:
    """peft's own injection and state-dict loading; keys it does not take are an error, not a silent skip."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    inject_adapter_in_model(config, component_module, adapter_name=adapter_name)
    result = set_peft_model_state_dict(component_module, state_dict, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"peft did not take {len(unexpected)} tensors, first {unexpected[0]}")
