"""The base pipeline: an embedded tiny one, a local diffusers folder, or a hub id from the local cache."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .config import TINY, TINY_FLUX, TINY_SD3, TINY_SDXL, HarnessConfig
from .families import Signature, denoiser_of, pipeline_signature

EMBEDDED_FAMILIES = {
    TINY: "tiny (SD1.x-shaped)", TINY_SDXL: "tiny (SDXL-shaped)", TINY_FLUX: "tiny (Flux-shaped)", TINY_SD3: "tiny (SD3-shaped)"
}


@dataclass
class BaseModel:
    pipeline: object
    model: str  # as the user named it
    family: str
    signature: Signature
    unet_params: int  # the denoiser's (U-Net or transformer); the name is results.json's contract
    native_size: int
    guidance_scale: float  # the pipeline's own default, used for every render

    def summary(self, fingerprint: str) -> dict:
        return {
            "model": self.model, "family": self.family, "fingerprint": fingerprint, "unet_params": self.unet_params,
            "guidance_scale": self.guidance_scale,
        }


def load_base(config: HarnessConfig) -> BaseModel:
    import torch

    from .renders import default_guidance

    if config.base_path is None:
        from . import tiny_base

        builders = {
            TINY: tiny_base.build_tiny_pipeline,
            TINY_SDXL: tiny_base.build_tiny_sdxl_pipeline,
            TINY_FLUX: tiny_base.build_tiny_flux_pipeline,
            TINY_SD3: tiny_base.build_tiny_sd3_pipeline,
        }
        pipeline = builders[config.base_model]()
    else:
        pipeline = _load_folder(config.base_path)
    pipeline.to(config.device)
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):  # built from configs they start in training mode: T5's dropout
            component.eval()
    pipeline.set_progress_bar_config(disable=True)
    denoiser = denoiser_of(pipeline)
    signature = pipeline_signature(pipeline)
    # Flux's transformer has no sample size; its pipeline holds the default.
    latent_size = denoiser.config.get("sample_size") or pipeline.default_sample_size
    return BaseModel(
        pipeline=pipeline,
        model=config.base_model,
        family=EMBEDDED_FAMILIES.get(config.base_model) or signature.family,
        signature=signature,
        unet_params=sum(p.numel() for p in denoiser.parameters()),
        native_size=latent_size * pipeline.vae_scale_factor,
        guidance_scale=default_guidance(pipeline),
    )


def _load_folder(path):
    from diffusers import DiffusionPipeline

    index = json.loads((path / "model_index.json").read_text())
    extra = {}
    if "safety_checker" in index:
        # A validation run judges the adapter's pixels, not content; the checker would black out images.
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return DiffusionPipeline.from_pretrained(path, local_files_only=True, use_safetensors=True, **extra)
