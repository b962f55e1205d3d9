"""Flux.2 (dev, Klein 4B and 9B): an MMDiT of double-stream blocks whose modulation is shared across blocks and
single-stream blocks whose q, k, v and MLP input are one fused projection (`to_qkv_mlp_proj`, in diffusers too), over
packed 2x2 patches of a VAE whose latents its batch norm normalizes; Mistral's (dev) or Qwen3's (Klein) hidden states
stacked per token; trained by rectified flow.

Klein 4B is as wide as Flux.1 (3072): attention-only keys fit either and are checked on the base given; the fused
single-stream projection and the SwiGLU `ff.linear_in` are Flux.2's own."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families import mmdit
from lora_harness.bases.families.family import Blocks, Family, Reference, Rendering, TinyTwin, default_guidance
from lora_harness.bases.families.objectives import RectifiedFlow


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    image = pixels.permute(2, 0, 1)[None].to(device, pipeline.vae.dtype)
    latents = pipeline._encode_vae_image(image * 2 - 1, generator=None)  # patchified and normalized as it samples
    prompt_embeds, text_ids = pipeline.encode_prompt(prompt=caption, device=device, num_images_per_prompt=1)
    conditioning = {
        "encoder_hidden_states": prompt_embeds,
        "txt_ids": text_ids,
        "img_ids": pipeline._prepare_latent_ids(latents).to(device),
        "guidance": None,
    }
    if pipeline.transformer.config.guidance_embeds:  # guidance-distilled (FLUX.2 dev): its default guidance
        conditioning["guidance"] = torch.full((1,), default_guidance(pipeline), device=device)
    return RectifiedFlow(pipeline._pack_latents(latents), conditioning)  # its transformer takes t in [0, 1]


FAMILY = Family(
    name="Flux.2",
    pipelines=("Flux2KleinPipeline", "Flux2Pipeline"),
    denoiser=mmdit.denoiser(
        "flux2",
        "Flux2Transformer2DModel",
        distinctive_modules=("to_qkv_mlp_proj", "ff.linear_in", "ff_context.linear_in"),
    ),
    widths={6144: "Flux.2 dev", 4096: "Flux.2 Klein 9B", 3072: "Flux.2 Klein 4B", 256: "tiny Flux.2"},
    any_width=True,
    reference=Reference(targets=mmdit.ATTENTION, example=training_example),
    rendering=Rendering(scale_keyword="attention_kwargs"),
    blocks=Blocks(stages={"transformer_blocks": "double", "single_transformer_blocks": "single"}, kinds=mmdit.KINDS),
    lineage_prefixes=("flux.2", "flux_2", "flux2"),
    converts_trainer_layouts=True,
    converts_lokr=True,
    tiny=TinyTwin("tiny-flux2", "tiny (Flux.2-shaped)", tiny_base.build_tiny_flux2_pipeline),
    variants=(TinyTwin("tiny-flux2-dev", "tiny (Flux.2 dev-shaped)", tiny_base.build_tiny_flux2_dev_pipeline),),
    model_types=("flux-2-dev",),
)
