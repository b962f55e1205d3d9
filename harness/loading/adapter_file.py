"""Read an adapter from disk: safetensors only, validated before anything is parsed; pickles are refused unread."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_harness.safetensors_file import TORCH_DTYPES, DamagedFile, read_header

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


class AdapterLoadError(Exception):
    """An adapter that cannot be read; the message names the file, what is wrong and the fix."""


class FamilyMismatch(AdapterLoadError):
    """The adapter was made for another model family than the base."""

    def __init__(self, path, made_for, base):
        super().__init__(
            f"{path}: made for {made_for}, but the base is {base}; pass the base it was trained on with --base-model"
        )


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
    try:
        header = read_header(weights_path)
    except DamagedFile as error:
        raise AdapterLoadError(str(error)) from None
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
