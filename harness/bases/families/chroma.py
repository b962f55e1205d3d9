"""Chroma (Chroma1-HD and its kin, from FLUX.1-schnell): Flux's double- and single-stream blocks with the per-block
modulation pruned to one approximator network, T5's masked token states alone, trained by rectified flow and
sampled with classifier-free guidance. diffusers loads its LoRAs with Flux's loader.

At their real widths Chroma and Flux are both 3072 wide with the same attention module names: an adapter that
targets only attention fits either, and is checked on the base it is given."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families import flux, mmdit
from lora_harness.bases.families.family import Family, Reference, TinyTwin
from lora_harness.bases.families.objectives import RectifiedFlow, scaled_latents


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    latents = scaled_latents(pipeline, pixels, device)
    batch, channels, height, width = latents.shape
    packed = pipeline._pack_latents(latents, batch, channels, height, width)
    prompt_embeds, text_ids, mask, *_ = pipeline.encode_prompt(
        prompt=caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    conditioning = {
        "encoder_hidden_states": prompt_embeds,
        "txt_ids": text_ids,
        "img_ids": pipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, prompt_embeds.dtype),
        # The text's padding masked, the image tokens open, as the pipeline's own call does.
        "attention_mask": pipeline._prepare_attention_mask(batch, packed.shape[1], prompt_embeds.dtype, mask),
    }
    return RectifiedFlow(packed, conditioning)  # its transformer takes t in [0, 1]


FAMILY = Family(
    name="Chroma",
    pipelines=("ChromaPipeline",),
    denoiser=mmdit.denoiser("chroma", "ChromaTransformer2DModel", distinctive_modules=("distilled_guidance_layer.",)),
    widths={3072: "Chroma", 160: "tiny Chroma"},
    any_width=True,
    reference=Reference(targets=mmdit.ATTENTION, example=training_example),
    rendering=mmdit.RENDERING,
    blocks=flux.FAMILY.blocks,
    lineage_prefixes=("chroma",),
    tiny=TinyTwin("tiny-chroma", "tiny (Chroma-shaped)", tiny_base.build_tiny_chroma_pipeline),
    model_types=("chroma",),
)
