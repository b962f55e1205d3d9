"""Read an adapter from disk: safetensors only, validated before anything is parsed; pickles are refused unread."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


class AdapterLoadError(Exception):
    """An adapter that cannot be read; the message names the file, what is wrong and the fix."""


class FamilyMismatch(AdapterLoadError):
    """The adapter was made for another model family than the base."""


class LazyTensors(Mapping):
    """The file's tensors by key, each read when asked for and kept by nobody here: a pass over them that looks at
    one at a time holds one, however large the file. Read straight from the bytes the checked header places it at:
    safetensors' `safe_open` parses the whole header on every open (a 2,238-key SDXL file, opened per tensor, took
    50 s), and one kept open keeps every page it mapped resident. Keys in the order safetensors lists them (sorted)."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self._entries = {key: header[key] for key in sorted(header) if key != "__metadata__"}
        # The checked header's tensors fill the file's end exactly (`_check_entries`): their data starts this far in.
        self._data_start = path.stat().st_size - max((e["data_offsets"][1] for e in self._entries.values()), default=0)

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        dtype = TORCH_DTYPES[entry["dtype"]]
        if end == begin:
            return torch.empty(entry["shape"], dtype=dtype)
        with self.path.open("rb") as handle:
            handle.seek(self._data_start + begin)
            data = bytearray(handle.read(end - begin))
        return torch.frombuffer(data, dtype=dtype).reshape(
            entry["shape"]
        )  # safetensors is little-endian, as is torch here

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class AdapterFile:
    path: Path  # as given: a file or a folder
    weights_path: Path  # the .safetensors file read
    tensors: Mapping[str, torch.Tensor]  # LazyTensors: a fresh tensor per lookup, read from the file
    file_metadata: dict[str, str] = field(default_factory=dict)  # the safetensors `__metadata__`
    adapter_config: dict | None = None  # a PEFT folder's adapter_config.json
    sha256: str = ""


def read_adapter(path: Path) -> AdapterFile:
    if not path.exists():
        raise AdapterLoadError(f"{path}: no such file or folder; check the path passed to --adapter")
    weights_path = _weights_in_folder(path) if path.is_dir() else path
    _refuse_pickle(weights_path)
    header = read_header(weights_path)
    adapter_config = None
    if path.is_dir() and (path / PEFT_CONFIG).is_file():
        try:
            adapter_config = json.loads((path / PEFT_CONFIG).read_text())
        except json.JSONDecodeError as error:
            raise AdapterLoadError(
                f"{path / PEFT_CONFIG}: not valid JSON ({error}); re-save the adapter with peft's save_pretrained"
            ) from None
    return AdapterFile(
        path=path,
        weights_path=weights_path,
        tensors=LazyTensors(weights_path, header),
        file_metadata=header.get("__metadata__") or {},
        adapter_config=adapter_config,
        sha256=_sha256(weights_path),
    )


def _weights_in_folder(folder: Path) -> Path:
    if (folder / PEFT_WEIGHTS).is_file():
        return folder / PEFT_WEIGHTS
    candidates = sorted(folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(c.name for c in candidates)
        raise AdapterLoadError(
            f"{folder}: holds several .safetensors files ({names}); pass the one to check as --adapter"
        )
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0])
    raise AdapterLoadError(
        f"{folder}: no adapter weights found; expected {PEFT_WEIGHTS} (peft's save_pretrained) or one .safetensors file"
    )


def _refuse_pickle(path: Path) -> None:
    """Refuse pickle-based checkpoints by name and by their first bytes, without unpickling anything."""
    with path.open("rb") as handle:
        head = handle.read(4)
    is_zip = head.startswith(b"PK\x03\x04")  # torch.save's default container
    is_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if path.suffix in PICKLE_SUFFIXES or is_zip or is_pickle:
        raise AdapterLoadError(
            f"{path}: a pickle-based checkpoint; lora-harness reads only .safetensors and never unpickles a file "
            "(unpickling can run arbitrary code). Convert it once, where you trust the file: "
            'python -c "import torch, safetensors.torch as st; '
            f"st.save_file(torch.load('{path}', weights_only=True), '{path.with_suffix('.safetensors')}')\""
        )


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
DTYPE_SIZES = {name: dtype.itemsize for name, dtype in TORCH_DTYPES.items()}


def read_header(path: Path) -> dict:
    """Parse and check a safetensors header ourselves, reading only the header: a broken file gets a message
    about that file, and is never handed to a fallback loader."""
    size = path.stat().st_size
    if size == 0:
        raise AdapterLoadError(
            f"{path}: the file is empty (0 bytes); the download or save did not finish, write it again"
        )
    fix = "the file is truncated or not a safetensors file; download or save it again"
    if size < 8:
        raise AdapterLoadError(f"{path}: only {size} bytes; {fix}")
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        if header_size > MAX_HEADER_BYTES or header_size > size - 8:
            raise AdapterLoadError(f"{path}: the header promises {header_size} bytes but the file has {size}; {fix}")
        raw = handle.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterLoadError(f"{path}: the header is not valid JSON; {fix}") from None
    if not isinstance(header, dict):
        raise AdapterLoadError(f"{path}: the header is not a JSON object; {fix}")
    _check_entries(path, header, data_size=size - 8 - header_size)
    return header


def _check_entries(path: Path, header: dict, data_size: int) -> None:
    """Every tensor entry well formed, its bytes inside the file, no two overlapping, none missing."""
    fix = "the file is damaged; download or save it again"
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterLoadError(f"{path}: `__metadata__` must map names to strings; {fix}")
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()):
            raise AdapterLoadError(f"{path}: tensor {key!r} lacks dtype, shape or data_offsets in the header; {fix}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise AdapterLoadError(f"{path}: tensor {key!r} has unknown dtype {dtype!r}; {fix}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise AdapterLoadError(f"{path}: tensor {key!r} has a malformed shape {shape!r}; {fix}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise AdapterLoadError(f"{path}: tensor {key!r} has malformed data_offsets {offsets!r}; {fix}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise AdapterLoadError(f"{path}: tensor {key!r} has data_offsets {offsets!r} that run backwards; {fix}")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise AdapterLoadError(
                f"{path}: tensor {key!r} of shape {shape} {dtype} does not fill bytes {begin}-{end}; {fix}"
            )
        spans.append((begin, end, key))
    promised = max((end for _, end, _ in spans), default=0)
    if promised > data_size:
        raise AdapterLoadError(
            f"{path}: truncated: the header promises {promised} bytes of tensor data, the file holds {data_size}; "
            "download or save it again"
        )
    covered = 0
    for begin, end, key in sorted(spans):
        if begin < covered:
            raise AdapterLoadError(f"{path}: tensor {key!r} overlaps the tensor before it; {fix}")
        if begin > covered:
            raise AdapterLoadError(f"{path}: bytes {covered}-{begin} before tensor {key!r} belong to no tensor; {fix}")
        covered = end
    if covered != data_size:
        raise AdapterLoadError(f"{path}: {data_size - covered} bytes after the last tensor belong to none; {fix}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
