"""Single-file bases (`--base-model FILE.safetensors`): one checkpoint in the original key layout, as AUTOMATIC1111
and ComfyUI hold them (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`, `flux1-dev.safetensors`).

The family is read from the header alone by diffusers' own detection (and the registry's `file_marks` where it
names none). A whole SD checkpoint is loaded through diffusers' `from_single_file` with the diffusers configs carried
in `base_configs/` and CLIP tokenizers built from open_clip's vocabulary, so nothing is fetched. A file of the
denoiser alone (ComfyUI's `diffusion_models/` files: Flux, Qwen-Image, Z-Image, Flux.2, Wan) is loaded by its model
class's `from_single_file` and the pipeline's other parts come from a diffusers folder or hub id (`--base-components`,
by default the repository diffusers names for the file's model type). Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lora_harness.bases.families import FAMILIES
from lora_harness.bases.families.family import SingleFile
from lora_harness.bases.families.unet import LDM_UNET
from lora_harness.config.config import ConfigError
from lora_harness.safetensors_file import FLOAT_DTYPES, DamagedFile, read_header

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
# A1111's legacy short hash, and Kohya's `ss_sd_model_hash`: SHA-256 of the 64 KiB at 1 MiB, first 8 hex digits.
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_BYTES = 0x10000
A1111_SHORT_HASH = 10  # A1111's newer short form: the file's SHA-256, first 10 hex digits

BY_NAME = {family.name: family for family in FAMILIES}
# What lora-harness carries to build each family's pipeline from one file, by family name.
CARRIED: dict[str, SingleFile] = {family.name: family.single_file for family in FAMILIES if family.single_file}
PIPELINES = {family.name: family.pipelines[0] for family in FAMILIES}
# Where each carried family's configs live; tests point a family at configs of narrow widths.
CONFIG_FOLDERS = {
    family: Path(__file__).parent / "base_configs" / carried.configs for family, carried in CARRIED.items()
}
# diffusers' model types (`infer_diffusers_model_type`) of the families lora-harness checks.
MODEL_TYPES = {model_type: family.name for family in FAMILIES for model_type in family.model_types}
COMFYUI_PREFIX = "model.diffusion_model."  # ComfyUI's checkpoint savers put it before a denoiser's keys
# diffusers answers "v1" for any file it does not recognise; an SD1.x U-Net has this key.
SD1_KEY = LDM_UNET + "output_blocks.11.0.skip_connection.weight"
# The MMDiT families' text encoders in single files (SD3's and ComfyUI's all-in-one layout).
MMDIT_PARTS = {
    "text_encoders.clip_l.": "CLIP-L",
    "text_encoders.clip_g.": "CLIP-G",
    "text_encoders.t5xxl.": "T5-XXL",
    "first_stage_model.": "VAE",
    "vae.": "VAE",
}
OTHER_PARTS = (*MMDIT_PARTS, "cond_stage_model.", "conditioner.")
DENOISER_FILES = ", ".join(family.name for family in FAMILIES if family.model_types and family.name not in CARRIED)
SUPPORTED = (
    f"{', '.join(CARRIED)} checkpoints as AUTOMATIC1111 and ComfyUI save them, or a file of a denoiser "
    f"({', '.join(CARRIED)}, {DENOISER_FILES}) whose pipeline's other parts come from --base-components"
)


@dataclass(frozen=True)
class SingleFileBase:
    """A single-file base as its header describes it (no weights read)."""

    path: Path
    family: str  # SD1.x, SDXL, Flux, Wan, ...
    model_type: str  # what diffusers' detection called it (or the registry's `file_marks`)
    dtype: str  # what most of the denoiser's tensors are stored in
    # It holds every part its pipeline needs and lora-harness carries the rest: built from the file alone. Otherwise
    # only its denoiser is taken from it, the rest from --base-components.
    whole: bool
    missing: tuple[str, ...] = ()  # the parts of a carried family's pipeline it lacks

    @property
    def carried(self) -> SingleFile:
        return CARRIED[self.family]

    @property
    def component(self) -> str:
        return BY_NAME[self.family].denoiser.component

    @property
    def default_components(self) -> str | None:
        """The repository a file of this model type takes the rest of its pipeline from: the family's own choice,
        else diffusers' for `from_single_file` (`DIFFUSERS_DEFAULT_PIPELINE_PATHS`); None where none serves."""
        from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

        family = BY_NAME[self.family]
        if self.model_type in family.components_repos:
            return family.components_repos[self.model_type]
        return DIFFUSERS_DEFAULT_PIPELINE_PATHS[self.model_type]["pretrained_model_name_or_path"]

    def record(self) -> dict:
        return {
            "path": str(self.path),
            "family": self.family,
            "model_type": self.model_type,
            "stored_dtype": self.dtype,
            # What the pipeline took from the file: all of it, or its denoiser (the rest from --base-components).
            "used": "every part" if self.whole else f"the {self.component}",
        }


def inspect_single_file(base_model: str, path: Path) -> SingleFileBase:
    """The family of a checkpoint file, told from its safetensors header; a ConfigError naming the file, what it saw
    and what to pass otherwise. Read once per file as it is on disk (resolving the option, `--dtype auto` and loading
    all ask)."""
    stat = path.stat()
    return _inspected(base_model, path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _inspected(base_model: str, path: Path, size: int, modified: int) -> SingleFileBase:

    _refuse_pickle(base_model, path)
    try:
        header = read_header(path)
    except DamagedFile as error:
        raise ConfigError(f"--base-model {base_model}: {error}") from None
    entries = {key: entry for key, entry in header.items() if key != "__metadata__"}
    model_type = _diffusers_model_type(entries)
    family = MODEL_TYPES.get(model_type)
    names = {key.removeprefix(COMFYUI_PREFIX) for key in entries}
    if model_type == "v1" and SD1_KEY not in entries:
        family, model_type = _marked(set(entries) | names)
    if family is None:
        raise ConfigError(_unknown_layout(base_model, entries, model_type))
    for prefix, what in BY_NAME[family].other_models.items():
        if any(name.startswith(prefix) for name in names):
            raise ConfigError(
                f"--base-model {base_model}: a {family} file of {what}; lora-harness renders from prompts alone: pass "
                "a text-to-video or text-to-image model's file"
            )
    carried = CARRIED.get(family)
    missing = tuple(
        name
        for prefix, name in (carried.parts if carried else {}).items()
        if not any(k.startswith(prefix) for k in entries)
    )
    denoiser_keys = [key for key in entries if key.startswith(LDM_UNET)] or [
        key for key in entries if not key.startswith(OTHER_PARTS)
    ]
    counted = Counter(entries[key]["dtype"] for key in denoiser_keys)
    stored = next((FLOAT_DTYPES[d] for d, _ in counted.most_common() if d in FLOAT_DTYPES), None)
    if stored is None:
        raise ConfigError(
            f"--base-model {base_model}: its denoiser holds no floating-point tensors ({dict(counted)}); save it again"
        )
    whole = carried is not None and not missing
    return SingleFileBase(path=path, family=family, model_type=model_type, dtype=stored, whole=whole, missing=missing)


def _marked(names: set[str]) -> tuple[str | None, str]:
    """A family whose denoiser file diffusers' detection does not name, told by the keys the registry marks it by
    (`names`: the file's keys with and without ComfyUI's prefix)."""
    for family in FAMILIES:
        if family.file_marks and names.issuperset(family.file_marks):
            return family.name, family.model_types[0]
    return None, "v1"


def _refuse_pickle(base_model: str, path: Path) -> None:
    """Refuse pickled checkpoints by name and by their first bytes, without unpickling them."""
    with path.open("rb") as handle:
        head = handle.read(4)
    is_zip = head.startswith(b"PK\x03\x04")  # torch.save's container, what .ckpt files are
    is_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if path.suffix.lower() in PICKLE_SUFFIXES or is_zip or is_pickle:
        raise ConfigError(
            f"--base-model {base_model}: a pickle-based checkpoint; lora-harness never unpickles a file (unpickling "
            "can run arbitrary code). Convert it once to .safetensors where you trust it (AUTOMATIC1111's and "
            "ComfyUI's checkpoint savers write safetensors), or pass a diffusers folder"
        )
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ConfigError(
            f"--base-model {base_model}: a file, but not a .safetensors checkpoint; pass a single-file checkpoint "
            f"({SUPPORTED}), a diffusers pipeline folder or a cached hub id"
        )


def _diffusers_model_type(entries: dict) -> str:
    """diffusers' own detection, run on the header's shapes: it only looks at key names and shapes."""
    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = {key: torch.empty(entry["shape"], device="meta") for key, entry in entries.items()}
    try:
        return infer_diffusers_model_type(shapes)
    except Exception:  # it assumes published shapes for layouts it half knows (an SD3 `pos_embed` of another size)
        return "v1"  # what it answers for a file it does not recognise


def _key_groups(entries: dict, count: int = 6) -> str:
    prefixes = Counter(".".join(key.split(".")[:2]) for key in entries)
    return ", ".join(f"`{prefix}.…` ({n})" for prefix, n in prefixes.most_common(count))


def _unknown_layout(base_model: str, entries: dict, model_type: str) -> str:
    seen = f"{len(entries)} tensors, {_key_groups(entries)}" if entries else "no tensors"
    told = "" if model_type == "v1" else f" (diffusers reads it as `{model_type}`)"
    return (
        f"--base-model {base_model}: not a checkpoint of a family lora-harness checks{told}; it holds {seen}. "
        f"Pass {SUPPORTED} (U-Net keys `{LDM_UNET}…`), a diffusers pipeline folder or a cached hub id"
    )


def described(base: SingleFileBase) -> str:
    """What a file that is not a whole pipeline holds, for messages: `a Flux file of the transformer alone`, `an
    SDXL checkpoint without its CLIP ViT-L text encoder`."""
    article = "an" if base.family.startswith("SD") else "a"  # spoken: an SDXL, a Flux
    if base.missing:
        return f"{article} {base.family} checkpoint without its {', '.join(base.missing)}"
    entries = read_header(base.path)
    held = sorted({name for prefix, name in MMDIT_PARTS.items() if any(k.startswith(prefix) for k in entries)})
    parts = f"the {base.component} and {', '.join(held)}" if held else f"the {base.component} alone"
    return f"{article} {base.family} file of {parts}"


def checkpoint_hashes(path: Path) -> dict:
    """The file's SHA-256 and the short forms trainers record: Kohya's `ss_new_sd_model_hash` is the SHA-256 of
    the whole file, `ss_sd_model_hash` AUTOMATIC1111's legacy hash (sd-scripts' `train_util.model_hash`)."""
    stat = path.stat()
    return dict(_hashes(path.resolve(), stat.st_size, stat.st_mtime_ns))


@lru_cache(maxsize=4)
def _hashes(path: Path, size: int, mtime_ns: int) -> tuple:  # size and time: a file rewritten in place is hashed again
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
        handle.seek(LEGACY_HASH_OFFSET)  # a file shorter than that hashes no bytes, as sd-scripts' does
        legacy = hashlib.sha256(handle.read(LEGACY_HASH_BYTES)).hexdigest()[:8]
    sha256 = digest.hexdigest()
    return (("sha256", sha256), ("a1111_short_hash", sha256[:A1111_SHORT_HASH]), ("legacy_model_hash", legacy))


def load_single_file(base: SingleFileBase, dtype):
    """The pipeline, through diffusers' `from_single_file` with the carried configs: nothing is downloaded."""
    import copy

    import diffusers

    from lora_harness.bases.tiny_base import clip_tokenizer

    tokenizers = {}
    for name, pad in base.carried.tokenizers.items():
        tokenizer = copy.deepcopy(clip_tokenizer())
        if pad is not None:
            tokenizer.pad_token = pad
        tokenizers[name] = tokenizer
    pipeline_class = getattr(diffusers, PIPELINES[base.family])
    return pipeline_class.from_single_file(
        str(base.path),
        config=str(CONFIG_FOLDERS[base.family]),
        local_files_only=True,
        torch_dtype=dtype,
        **tokenizers,
        **base.carried.pipeline_kwargs,
    )


def components_class(components: Path, component: str) -> str:
    """The model class a components folder's pipeline holds its denoiser in (`model_index.json`)."""
    return json.loads((components / "model_index.json").read_text())[component][1]


def denoiser_misfit(base: SingleFileBase, components: Path) -> str | None:
    """Why the file's denoiser cannot load as the components' denoiser, read from shapes alone: the file's header
    converted by the model class's own single-file mapping (on the meta device) against the model the components'
    config builds; None when every key and shape fits."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_model import (
        SINGLE_FILE_LOADABLE_CLASSES,
        _should_convert_state_dict_to_diffusers,
    )

    class_name = components_class(components, base.component)
    if class_name not in SINGLE_FILE_LOADABLE_CLASSES:
        return f"its {base.component} is a {class_name}, which diffusers loads from no single file"
    model_class = getattr(diffusers, class_name)
    config = model_class.load_config(components, subfolder=base.component, local_files_only=True)
    with torch.device("meta"):
        model_state = model_class.from_config(config).state_dict()
        header = {k: torch.empty(e["shape"]) for k, e in read_header(base.path).items() if k != "__metadata__"}
    prefixed = all(key.startswith(COMFYUI_PREFIX) for key in header)
    expected = {key: tuple(tensor.shape) for key, tensor in model_state.items()}
    try:
        mapping = SINGLE_FILE_LOADABLE_CLASSES[class_name]["checkpoint_mapping_fn"]
        if _should_convert_state_dict_to_diffusers(model_state, header):  # as from_single_file decides
            header = mapping(checkpoint=header, config=config)
        said = _differences(expected, {key: tuple(tensor.shape) for key, tensor in header.items()})
    except Exception as error:  # each mapping assumes its published layout and widths; any failure says the file is not
        said = [f"diffusers' {class_name} conversion failed on it ({type(error).__name__}: {error})"]
    if said and prefixed:
        said.append(
            f"its keys carry ComfyUI's `{COMFYUI_PREFIX}` prefix, which diffusers' {class_name} conversion does not "
            "strip: save the file again without it"
        )
    return "; ".join(said) or None


def _differences(expected: dict, converted: dict) -> list[str]:
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    reshaped = sorted(key for key in set(expected) & set(converted) if expected[key] != converted[key])
    said = []
    if missing:
        said.append(f"{len(missing)} of the model's {len(expected)} tensors are not in it (first `{missing[0]}`)")
    if unexpected:
        said.append(f"{len(unexpected)} of its tensors have no place in the model (first `{unexpected[0]}`)")
    if reshaped:
        key = reshaped[0]
        said.append(
            f"{len(reshaped)} tensors differ in shape (first `{key}`: {list(converted[key])} in the file, "
            f"{list(expected[key])} in the model)"
        )
    return said


def load_denoiser(base: SingleFileBase, components: Path, dtype):
    """The file's denoiser, read by its model class's own `from_single_file` and configured by the components'
    config; the rest of the pipeline loads from the components folder."""
    import diffusers

    model_class = getattr(diffusers, components_class(components, base.component))
    return model_class.from_single_file(
        str(base.path), config=str(components), subfolder=base.component, local_files_only=True, torch_dtype=dtype
    )
