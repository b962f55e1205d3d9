"""The base pipeline: an embedded tiny one, a local diffusers folder, or a hub id from the local cache."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .config import TINY, TINY_SDXL, HarnessConfig
from .families import family_of_width


@dataclass
class BaseModel:
    pipeline: object
    model: str  # as the user named it
    family: str
    cross_attention_width: int | None
    unet_params: int
    native_size: int

    def summary(self, fingerprint: str) -> dict:
        return {"model": self.model, "family": self.family, "fingerprint": fingerprint, "unet_params": self.unet_params}


def load_base(config: HarnessConfig) -> BaseModel:
    if config.base_path is None:
        from .tiny_base import build_tiny_pipeline, build_tiny_sdxl_pipeline

        pipeline = {TINY: build_tiny_pipeline, TINY_SDXL: build_tiny_sdxl_pipeline}[config.base_model]()
    else:
        pipeline = _load_folder(config.base_path)
    pipeline.to(config.device)
    pipeline.set_progress_bar_config(disable=True)
    denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
    width = denoiser.config.get("cross_attention_dim")
    native_size = denoiser.config.sample_size * pipeline.vae_scale_factor
    family = {TINY: "tiny (SD1.x-shaped)", TINY_SDXL: "tiny (SDXL-shaped)"}.get(config.base_model) or family_of_width(width)
    return BaseModel(
        pipeline=pipeline,
        model=config.base_model,
        family=family,
        cross_attention_width=width,
        unet_params=sum(p.numel() for p in denoiser.parameters()),
        native_size=native_size,
    )


def _load_folder(path):
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    extra = {}
    if "safety_checker" in index:
        # A validation run judges the adapter's pixels, not content; the checker would black out images.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True, **extra)
