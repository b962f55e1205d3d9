"""Flux.1 (dev, schnell and their fine-tunes): an MMDiT of double-stream (text and image) and single-stream blocks
over packed 2x2 latent patches, CLIP's pooled text and T5's token states, trained by rectified flow."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families import mmdit
from lora_harness.bases.families.family import Blocks, Family, Reference, TinyTwin, default_guidance
from lora_harness.bases.families.objectives import RectifiedFlow, scaled_latents


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    latents = scaled_latents(pipeline, pixels, device)
    batch, channels, height, width = latents.shape
    packed = pipeline._pack_latents(latents, batch, channels, height, width)
    prompt_embeds, pooled, text_ids = pipeline.encode_prompt(
        prompt=caption, prompt_2=None, device=device, num_images_per_prompt=1
    )
    conditioning = {
        "encoder_hidden_states": prompt_embeds,
        "pooled_projections": pooled,
        "txt_ids": text_ids,
        "img_ids": pipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, prompt_embeds.dtype),
    }
    if pipeline.transformer.config.guidance_embeds:  # guidance-distilled (FLUX.1-dev): its default guidance
        conditioning["guidance"] = torch.full((1,), default_guidance(pipeline), device=device)
    return RectifiedFlow(packed, conditioning)  # its transformer takes t in [0, 1]


FAMILY = Family(
    name="Flux",
    pipelines=("FluxPipeline",),
    denoiser=mmdit.denoiser("flux", "FluxTransformer2DModel", distinctive_modules=("single_transformer_blocks.",)),
    widths={3072: "Flux", 96: "tiny Flux"},
    any_width=True,
    reference=Reference(targets=mmdit.ATTENTION, example=training_example),
    rendering=mmdit.RENDERING,
    blocks=Blocks(stages={"transformer_blocks": "double", "single_transformer_blocks": "single"}, kinds=mmdit.KINDS),
    lineage_prefixes=("flux",),
    tiny=TinyTwin("tiny-flux", "tiny (Flux-shaped)", tiny_base.build_tiny_flux_pipeline),
    model_types=("flux-dev", "flux-schnell"),
)
