"""Renders on disk, one PNG per image, keyed by everything that decides its pixels: a second run of the same
adapter on the same base and settings makes no U-Net call for them."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_harness import __version__

TEXT_KEY = "lora_harness"


@dataclass(frozen=True)
class RenderKey:
    """What decides a render's pixels. Device and dtype are here too: a CUDA fp16 render is not a CPU one."""

    base_fingerprint: str
    adapter_sha256: str | None  # None: the base
    scale: float
    prompt: str
    seed: int
    steps: int
    guidance_scale: float | None
    size: int
    scheduler: str  # class name and config
    device: str
    dtype: str
    frames: int = 1
    harness_version: str = __version__

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()


@dataclass
class CachedRender:
    image: np.ndarray  # HxWx3 uint8
    finite: bool
    layers_run: list[str]  # LoRA layers whose forward ran while it was rendered


class RenderCache:
    def __init__(self, folder: Path):
        self.folder = folder
        self.hits = 0
        self.written = 0

    def _path(self, key: RenderKey) -> Path:
        digest = key.digest()
        return self.folder / digest[:2] / f"{digest}.png"

    def get(self, key: RenderKey) -> CachedRender | None:
        """The entry, or None when absent or not whole: a run killed mid-write, a disk error or a file put there by
        something else is rendered again, never used."""
        try:
            render = self._read(key)
        except (OSError, SyntaxError, KeyError, TypeError, ValueError):  # what PIL and json raise on a broken entry
            return None
        self.hits += 1
        return render

    def _read(self, key: RenderKey) -> CachedRender:
        with Image.open(self._path(key)) as png:
            facts = json.loads(png.text[TEXT_KEY])
            image = np.asarray(png.convert("RGB"))
        if facts["key"] != key.__dict__ or facts["pixels"] != _pixel_digest(image):
            raise ValueError("the entry holds another render than its name says")
        return CachedRender(image, facts["finite"], facts["layers_run"])

    def put(self, key: RenderKey, render: CachedRender) -> None:
        """Temp file + rename: xdist workers and other runs share the folder, and a killed run leaves no half-written
        entry (at most a stray temp file, which no key names)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = _pixel_digest(render.image)
        facts = {"finite": render.finite, "layers_run": render.layers_run, "key": key.__dict__, "pixels": pixels}
        info = PngInfo()
        info.add_text(TEXT_KEY, json.dumps(facts))
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
        with os.fdopen(handle, "wb") as out:
            Image.fromarray(render.image).save(out, format="PNG", pnginfo=info)
        os.replace(temporary, path)
        self.written += 1


def _pixel_digest(image: np.ndarray) -> str:
    """Of the pixels and their shape: an entry whose image decodes but is not the one written is caught."""
    return hashlib.sha256(repr(image.shape).encode() + np.ascontiguousarray(image).tobytes()).hexdigest()


def scheduler_identity(scheduler) -> str:
    config = {key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")}
    return f"{type(scheduler).__name__}:{json.dumps(config, sort_keys=True, default=str)}"
