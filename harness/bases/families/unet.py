"""The SD U-Net (`UNet2DConditionModel`), shared by SD1.x, SD2.x and SDXL: its width, its blocks, the reference
overfit's targets and how a training example is encoded. The three families differ in the text width its
cross-attention reads."""

from __future__ import annotations

import torch

from lora_harness.bases.families.family import Blocks, Denoiser, Reference, Rendering
from lora_harness.bases.families.objectives import NoisePrediction, scaled_latents

LDM_UNET = "model.diffusion_model."  # the U-Net's keys in a single-file checkpoint (SGM's layout)
NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

DENOISER = Denoiser(
    architecture="unet",
    component="unet",
    classes=("UNet2DConditionModel",),
    width=lambda unet: unet.config.cross_attention_dim,
    width_label="cross-attention",
    width_modules=("attn2.to_k", "attn2.to_v"),
)
BLOCKS = Blocks(
    stages={"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"},
    kinds={
        "attn1": "attn1",
        "attn2": "attn2",
        "ff": "ff",
        "proj_in": "proj",
        "proj_out": "proj",
        "conv1": "conv",
        "conv2": "conv",
        "conv_shortcut": "conv",
        "time_emb_proj": "time-emb",
        "downsamplers": "resample",
        "upsamplers": "resample",
    },
)


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> NoisePrediction:
    """The image's latents and the caption's conditioning, as the pipeline itself encodes a prompt."""
    encoded = pipeline.encode_prompt(
        prompt=caption, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    conditioning = {"encoder_hidden_states": encoded[0]}
    if pipeline.unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size micro-conditioning
        size = pixels.shape[0]
        original_size, crop_top_left, target_size = (size, size), (0, 0), (size, size)
        time_ids = torch.tensor([[*original_size, *crop_top_left, *target_size]], device=device, dtype=encoded[0].dtype)
        conditioning["added_cond_kwargs"] = {"text_embeds": encoded[2], "time_ids": time_ids}
    return NoisePrediction(scaled_latents(pipeline, pixels, device), conditioning, pipeline.scheduler)


# What every U-Net family's `Family` holds alike: `Family(name=..., **unet.PARTS, ...)`.
PARTS = dict(
    denoiser=DENOISER,
    reference=Reference(targets=("to_q", "to_k", "to_v", "to_out.0"), example=training_example),
    rendering=Rendering(scale_keyword="cross_attention_kwargs"),
    blocks=BLOCKS,
)
