"""Single-file bases (`--base-model FILE.safetensors`): one checkpoint in the original key layout, as AUTOMATIC1111
and ComfyUI hold them (`v1-5-pruned-emaonly.safetensors`, `sd_xl_base_1.0.safetensors`, `flux1-dev.safetensors`).

The family is read from the header alone by diffusers' own detection; the file is loaded through diffusers'
`from_single_file` with the diffusers configs carried in `base_configs/` and CLIP tokenizers built from open_clip's
vocabulary, so nothing is fetched. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
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

# What lora-harness carries to build each family's pipeline from one file, by family name.
CARRIED: dict[str, SingleFile] = {family.name: family.single_file for family in FAMILIES if family.single_file}
PIPELINES = {family.name: family.pipelines[0] for family in FAMILIES}
# Where each carried family's configs live; tests point a family at configs of narrow widths.
CONFIG_FOLDERS = {
    family: Path(__file__).parent / "base_configs" / carried.configs for family, carried in CARRIED.items()
}
# diffusers' model types (`infer_diffusers_model_type`) of the families lora-harness checks.
MODEL_TYPES = {model_type: family.name for family in FAMILIES for model_type in family.model_types}
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
SUPPORTED = f"{', '.join(CARRIED)} checkpoints as AUTOMATIC1111 and ComfyUI save them"


@dataclass(frozen=True)
class SingleFileBase:
    """A single-file base as its header describes it (no weights read)."""

    path: Path
    family: str  # SD1.x, SD2.x, SDXL
    model_type: str  # what diffusers' detection called it
    dtype: str  # what most of the U-Net's tensors are stored in

    @property
    def carried(self) -> SingleFile:
        return CARRIED[self.family]

    def record(self) -> dict:
        return {
            "path": str(self.path),
            "family": self.family,
            "model_type": self.model_type,
            "stored_dtype": self.dtype,
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
    if model_type == "v1" and SD1_KEY not in entries:
        family = None
    if family is None:
        raise ConfigError(_unknown_layout(base_model, entries, model_type))
    if family not in CARRIED:
        raise ConfigError(_not_buildable_offline(base_model, family, model_type, entries))
    missing = [name for prefix, name in CARRIED[family].parts.items() if not any(k.startswith(prefix) for k in entries)]
    if missing:
        raise ConfigError(
            f"--base-model {base_model}: an {family} checkpoint (diffusers reads it as `{model_type}`) without its "
            f"{', '.join(missing)} (no `{'`, `'.join(p for p, n in CARRIED[family].parts.items() if n in missing)}` "
            "keys); lora-harness builds the whole pipeline from the file and cannot fetch the rest: pass a full "
            "checkpoint or a diffusers folder of the base"
        )
    counted = Counter(entry["dtype"] for key, entry in entries.items() if key.startswith(LDM_UNET))
    stored = next((FLOAT_DTYPES[d] for d, _ in counted.most_common() if d in FLOAT_DTYPES), None)
    if stored is None:
        raise ConfigError(
            f"--base-model {base_model}: its U-Net holds no floating-point tensors ({dict(counted)}); save it again"
        )
    return SingleFileBase(path=path, family=family, model_type=model_type, dtype=stored)


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
    return infer_diffusers_model_type(shapes)


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


def _not_buildable_offline(base_model: str, family: str, model_type: str, entries: dict) -> str:
    held = sorted({name for prefix, name in MMDIT_PARTS.items() if any(k.startswith(prefix) for k in entries)})
    holds = f"the transformer and {', '.join(held)}" if held else "the transformer only"
    return (
        f"--base-model {base_model}: a {family} checkpoint (diffusers reads it as `{model_type}`) holding {holds}; "
        f"{family}'s pipeline needs T5-XXL's text encoder and its SentencePiece tokenizer, and no single file holds "
        "that tokenizer, so lora-harness cannot build the pipeline offline. Pass a diffusers folder of the base "
        "(`save_pretrained`) or its hub id from the local cache"
    )


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
