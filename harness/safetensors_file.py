"""A safetensors file's header, parsed and checked by the harness itself before anything reads a tensor: a broken
file gets a message about that file, and is never handed to a fallback loader. Adapters and single-file bases are
read through it."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


class DamagedFile(ValueError):
    """A file that is not a whole safetensors file; the message names the file, what is wrong and the fix."""


TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
}
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # torch's names: `--dtype`
DTYPE_SIZES = {name: dtype.itemsize for name, dtype in TORCH_DTYPES.items()}


def read_header(path: Path) -> dict:
    """Parse and check a safetensors header ourselves, reading only the header: a broken file gets a message
    about that file, and is never handed to a fallback loader."""
    size = path.stat().st_size
    if size == 0:
        raise DamagedFile(f"{path}: the file is empty (0 bytes); the download or save did not finish, write it again")
    fix = "the file is truncated or not a safetensors file; download or save it again"
    if size < 8:
        raise DamagedFile(f"{path}: only {size} bytes; {fix}")
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        if header_size > MAX_HEADER_BYTES or header_size > size - 8:
            raise DamagedFile(f"{path}: the header promises {header_size} bytes but the file has {size}; {fix}")
        raw = handle.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DamagedFile(f"{path}: the header is not valid JSON; {fix}") from None
    if not isinstance(header, dict):
        raise DamagedFile(f"{path}: the header is not a JSON object; {fix}")
    _check_entries(path, header, data_size=size - 8 - header_size)
    return header


def _check_entries(path: Path, header: dict, data_size: int) -> None:
    """Every tensor entry well formed, its bytes inside the file, no two overlapping, none missing."""
    fix = "the file is damaged; download or save it again"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise DamagedFile(f"{path}: `__metadata__` must map names to strings; {fix}")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            raise DamagedFile(f"{path}: tensor {key!r} lacks dtype, shape or data_offsets in the header; {fix}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise DamagedFile(f"{path}: tensor {key!r} has unknown dtype {dtype!r}; {fix}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise DamagedFile(f"{path}: tensor {key!r} has a malformed shape {shape!r}; {fix}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise DamagedFile(f"{path}: tensor {key!r} has malformed data_offsets {offsets!r}; {fix}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise DamagedFile(f"{path}: tensor {key!r} has data_offsets {offsets!r} that run backwards; {fix}")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise DamagedFile(
                f"{path}: tensor {key!r} of shape {shape} {dtype} does not fill bytes {begin}-{end}; {fix}"
            )
        spans.append((begin, end, key))
    promised = max((end for _, end, _ in spans), default=0)
    if promised > data_size:
        raise DamagedFile(
            f"{path}: truncated: the header promises {promised} bytes of tensor data, the file holds {data_size}; "
            "download or save it again"
        )
    covered = 0
    for begin, end, key in sorted(spans):
        if begin < covered:
            raise DamagedFile(f"{path}: tensor {key!r} overlaps the tensor before it; {fix}")
        if begin > covered:
            raise DamagedFile(f"{path}: bytes {covered}-{begin} before tensor {key!r} belong to no tensor; {fix}")
        covered = end
    if covered != data_size:
        raise DamagedFile(f"{path}: {data_size - covered} bytes after the last tensor belong to none; {fix}")
