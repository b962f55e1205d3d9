"""SD3 and SD3.5: an MMDiT of joint (text and image) blocks over latent patches, two CLIP encoders (pooled and
token states) and T5, trained by rectified flow and sampled with classifier-free guidance."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families import mmdit
from lora_harness.bases.families.family import Blocks, Family, Reference, TinyTwin
from lora_harness.bases.families.objectives import RectifiedFlow, scaled_latents


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
        prompt=caption,
        prompt_2=None,
        prompt_3=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    conditioning = {"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled}
    # Its transformer takes t in [0, 1000].
    return RectifiedFlow(scaled_latents(pipeline, pixels, device), conditioning, timestep_scale=1000.0)


FAMILY = Family(
    name="SD3",
    pipelines=("StableDiffusion3Pipeline",),
    denoiser=mmdit.denoiser("sd3", "SD3Transformer2DModel"),
    widths={1536: "SD3 medium", 2432: "SD3.5 large", 128: "tiny SD3"},
    any_width=True,
    reference=Reference(targets=mmdit.ATTENTION, example=training_example),
    rendering=mmdit.RENDERING,
    blocks=Blocks(stages={"transformer_blocks": "joint"}, kinds=mmdit.KINDS),
    lineage_prefixes=("sd3", "stable-diffusion-3"),
    tiny=TinyTwin("tiny-sd3", "tiny (SD3-shaped)", tiny_base.build_tiny_sd3_pipeline),
    model_types=("sd3", "sd35_medium", "sd35_large"),
)
