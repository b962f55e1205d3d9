"""Files in a trainer's own layout that the base's pipeline class converts itself (musubi-tuner's `lora_unet_…`,
ai-toolkit's `diffusion_model.…`), traced back to the file by value.

The class's own `lora_state_dict` does the conversion, as its `load_lora_weights` would; it may rename, bake
alpha / rank into the values, or cut a fused module's up matrix into its layers' rows. Each converted layer is
traced to the file module whose down matrix its A is proportional to and whose up matrix holds its B (whole, or as
a block of rows): what each file module means is then the layers it fills, and the proof compares updates there
(`FluxModule`, as for Flux's community layouts). File modules the conversion dropped are named, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_harness.loading.adapter_file import AdapterFile, AdapterLoadError
from lora_harness.loading.flux_layouts import FluxModule

FACTORS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))
# Prefixes trainers put before the denoiser's module path; what is left names a layer as diffusers does.
TRAINER_PREFIXES = ("lora_unet_", "diffusion_model.", "transformer.")
BIAS_DIFFERENCE = ".diff_b"  # a bias's full difference, added as it is
COSINE = 1 - 1e-4  # proportional: a rescaled copy, rounded in a half-precision file's dtype at worst


@dataclass
class TracedConversion:
    converted: dict[str, torch.Tensor]  # "component.layer.lora_A.weight" -> tensor, as the class's loader takes them
    modules: dict[str, FluxModule]  # file module -> the layers it fills
    dropped: list[str]  # file keys of modules no converted layer came from
    invented: list[str]  # converted layers traced to no file module
    biases: dict[str, tuple[str, str]]  # file key of a `.diff_b` -> (component, layer) whose LoRA bias holds it


def traced_by_loader(adapter: AdapterFile, pipeline, what: str, tracer, unused_alpha: bool = False):
    """`tracer(tensors, pipeline)`: the base's pipeline class's own conversion of the file, traced back to it;
    refused, naming why, where the conversion fails or makes layers that no tensor of the file holds. `unused_alpha`:
    the file's alphas may be infinite (ai-toolkit's LoKr with both factors full stores the one it does not use as
    float16 infinity)."""
    loader = type(pipeline).__name__
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


def trace(tensors: dict[str, torch.Tensor], pipeline) -> TracedConversion:
    converted = type(pipeline).lora_state_dict({key: tensor.clone() for key, tensor in tensors.items()})
    if isinstance(converted, tuple):  # (state dict, network alphas) for the classes that return both
        converted = converted[0]
    files = _file_modules(tensors)
    by_name = {_plain(module): module for module in files}
    filled: dict[str, list[tuple[int, str, str]]] = {}  # file module -> (row offset, component, layer)
    rows_taken: dict[str, int] = {}  # file module -> rows of its up matrix that converted layers hold so far
    invented = []
    for a_key in [key for key in converted if key.endswith(".lora_A.weight")]:
        component, layer = a_key.removesuffix(".lora_A.weight").split(".", 1)
        a, b = converted[a_key], converted.get(a_key.replace(".lora_A.", ".lora_B."))
        named = by_name.get(_plain(layer))
        # The file module of the same name first; else any whose factors hold these (a renamed or fused module)
        # and whose up matrix has rows left: an all-zero pair matches any other, so a claimed module is skipped.
        others = [m for m in files if m != named and rows_taken.get(m, 0) < tensors[files[m][1]].shape[0]]
        for module in ([named] if named else []) + others:
            down, up = (tensors[key] for key in files[module])
            taken = rows_taken.get(module, 0)
            offset = _row_offset(b, up, taken) if b is not None and proportional(a, down) else None
            if offset is not None:
                filled.setdefault(module, []).append((offset, component, layer))
                rows_taken[module] = taken + b.shape[0]
                break
        else:
            invented.append(f"{component}.{layer}")
    modules = {}
    for module, layers in filled.items():
        down, up = files[module]
        alpha = tensors.get(f"{module}.alpha")
        rank = tensors[down].shape[0]
        layers.sort()
        modules[module] = FluxModule(
            down=down,
            up=up,
            scale=1.0 if alpha is None else float(alpha) / rank,  # no alpha: alpha = rank, as Kohya's loaders read it
            component=layers[0][1],
            layers=tuple(layer for _, _, layer in layers),
        )
    dropped = [key for module, keys in files.items() if module not in modules for key in keys]
    biases = _biases(tensors, converted)
    # Other keys of no factor pair (DoRA's `dora_scale`, a norm's `.diff`): the conversion may use or drop them, and
    # nothing here traces them, so they are named rather than passed over.
    factors = {key for keys in files.values() for key in keys} | set(biases)
    dropped += [key for key in tensors if key not in factors and not key.endswith(".alpha")]
    return TracedConversion(converted, modules, dropped, invented, biases)


def _biases(tensors, converted) -> dict[str, tuple[str, str]]:
    """A bias difference (`.diff_b`, as Wan's distillation LoRAs carry) lands unchanged as its layer's LoRA bias
    (peft's `lora_bias`): each is traced to the converted bias with its values. Equal values are interchangeable
    (all-zero differences), so each converted bias is claimed once."""
    unclaimed = {key: tensor for key, tensor in converted.items() if key.endswith(".lora_B.bias")}
    biases = {}
    for key in [key for key in tensors if key.endswith(BIAS_DIFFERENCE)]:
        found = next((c for c, bias in unclaimed.items() if torch.equal(bias, tensors[key])), None)
        if found is not None:
            del unclaimed[found]
            biases[key] = tuple(found.removesuffix(".lora_B.bias").split(".", 1))
    return biases


def _file_modules(tensors) -> dict[str, tuple[str, str]]:
    """File module -> (down key, up key)."""
    modules = {}
    for key in tensors:
        for down_suffix, up_suffix in FACTORS:
            module = key.removesuffix(down_suffix)
            if module != key and module + up_suffix in tensors:
                modules[module] = (key, module + up_suffix)
    return modules


def _plain(name: str) -> str:
    """'lora_unet_transformer_blocks_0_attn_to_q' and 'transformer_blocks.0.attn.to_q' -> one spelling."""
    for prefix in TRAINER_PREFIXES:
        name = name.removeprefix(prefix)
    return name.replace(".", "_")


def proportional(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    norms = a.norm() * b.norm()
    if norms == 0:
        return bool(a.norm() == b.norm())  # both zero
    return bool(a @ b / norms >= COSINE)


def _row_offset(b: torch.Tensor, up: torch.Tensor, taken: int = 0) -> int | None:
    """Where `b`'s rows sit in `up` (a rescaled copy of all of it, or of a block of its rows); None if nowhere.
    An all-zero `b` sits in the next rows not yet `taken` when those are zero too (an untrained fused module)."""
    if b.shape[1:] != up.shape[1:] or b.shape[0] > up.shape[0]:
        return None
    if b.shape == up.shape:
        return 0 if proportional(b, up) else None
    rows = up.detach().double().reshape(up.shape[0], -1)
    nonzero = torch.nonzero(b.detach().double().reshape(b.shape[0], -1).norm(dim=1)).flatten().tolist()
    if not nonzero:
        block = rows[taken : taken + b.shape[0]]
        return taken if len(block) == b.shape[0] and not block.any() else None
    row = nonzero[0]  # matched through its first non-zero row, which sits `row` rows into the block
    first = b[row].detach().double().flatten()
    cosines = rows @ first / (rows.norm(dim=1) * first.norm()).clamp_min(1e-30)
    for found in torch.nonzero(cosines >= COSINE).flatten().tolist():
        offset = found - row
        if 0 <= offset and offset + b.shape[0] <= up.shape[0] and proportional(b, up[offset : offset + b.shape[0]]):
            return offset
    return None
