"""Read an adapter from disk: safetensors only, validated before anything is parsed; pickles are refused unread."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


class AdapterLoadError(Exception):
    """An adapter that cannot be read; the message names the file, what is wrong and the fix."""


@dataclass
class AdapterFile:
    path: Path  # as given: a file or a folder
    weights_path: Path  # the .safetensors file read
    tensors: dict[str, torch.Tensor]
    file_metadata: dict[str, str] = field(default_factory=dict)  # the safetensors `__metadata__`
    adapter_config: dict | None = None  # a PEFT folder's adapter_config.json
    sha256: str = ""


def read_adapter(path: Path) -> AdapterFile:
    if not path.exists():
        raise AdapterLoadError(f"{path}: no such file or folder; check the path passed to --adapter")
    weights_path = _weights_in_folder(path) if path.is_dir() else path
    _refuse_pickle(weights_path)
    header = _read_header(weights_path)
    adapter_config = None
    if path.is_dir() and (path / PEFT_CONFIG).is_file():
        try:
            adapter_config = json.loads((path / PEFT_CONFIG).read_text())
        except json.JSONDecodeError as error:
            raise AdapterLoadError(
                f"{path / PEFT_CONFIG}: not valid JSON ({error}); re-save the adapter with peft's save_pretrained"
            ) from None
    from safetensors.torch import load_file

    return AdapterFile(
        path=path,
        weights_path=weights_path,
        tensors=load_file(weights_path),
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
        raise AdapterLoadError(f"{folder}: holds several .safetensors files ({names}); pass the one to check as --adapter")
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
            "python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{path}', weights_only=True), '{path.with_suffix('.safetensors')}')\""
        )


def _read_header(path: Path) -> dict:
    """Parse and check the safetensors header ourselves, so a broken file gets a message about that file."""
    size = path.stat().st_size
    if size == 0:
        raise AdapterLoadError(f"{path}: the file is empty (0 bytes); the download or save did not finish, write it again")
    fix = "the file is truncated or not a safetensors file; download or save it again"
    if size < 8:
        raise AdapterLoadError(f"{path}: only {size} bytes; {fix}")
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        if header_size > MAX_HEADER_BYTES or header_size > size - 8:
            raise AdapterLoadError(f"{path}: the header claims {header_size} bytes but the file has {size}; {fix}")
        raw = handle.read(header_size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterLoadError(f"{path}: the header is not valid JSON; {fix}") from None
    if not isinstance(header, dict):
        raise AdapterLoadError(f"{path}: the header is not a JSON object; {fix}")
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    data_size = size - 8 - header_size
    if data_end != data_size:
        raise AdapterLoadError(
            f"{path}: the header describes {data_end} bytes of tensor data but the file holds {data_size}; {fix}"
        )
    return header


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
