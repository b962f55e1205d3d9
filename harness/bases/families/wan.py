"""Wan 2.1 and 2.2 (text to video): blocks of self-attention over 1x2x2 patches of every latent frame,
cross-attention to UMT5's token states and an MLP, a causal video VAE whose latents are normalized per channel;
trained by rectified flow. A render is a stack of frames (`--render-frames`)."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families.family import (
    Blocks,
    Denoiser,
    Family,
    Reference,
    Rendering,
    TinyTwin,
    attention_inner_width,
)
from lora_harness.bases.families.objectives import RectifiedFlow, normalized_video_latents

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")  # in self- (`attn1`) and cross-attention (`attn2`)


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    """The training image as a one-frame video."""
    latents = normalized_video_latents(pipeline, pixels, device)
    prompt_embeds, _ = pipeline.encode_prompt(prompt=caption, do_classifier_free_guidance=False, device=device)
    # Its transformer takes t in [0, 1000].
    return RectifiedFlow(latents, {"encoder_hidden_states": prompt_embeds}, timestep_scale=1000.0)


FAMILY = Family(
    name="Wan",
    pipelines=("WanPipeline",),
    denoiser=Denoiser(
        architecture="wan",
        component="transformer",
        classes=("WanTransformer3DModel",),
        width=attention_inner_width,
        width_label="transformer width",
        width_modules=("attn1.to_q",),
        distinctive_modules=("ffn.net.", "attn2."),
        second_expert="transformer_2",
    ),
    widths={5120: "Wan 14B", 3072: "Wan 2.2 5B", 1536: "Wan 1.3B", 288: "tiny Wan"},
    any_width=True,
    reference=Reference(targets=ATTENTION, example=training_example),
    rendering=Rendering(scale_keyword="attention_kwargs", native_size=480, video=True),
    blocks=Blocks(stages={"blocks": "block"}, kinds={"attn1": "attn-self", "attn2": "attn-cross", "ffn": "ff"}),
    lineage_prefixes=("wan",),
    converts_trainer_layouts=True,
    tiny=TinyTwin("tiny-wan", "tiny (Wan-shaped)", tiny_base.build_tiny_wan_pipeline),
    variants=(TinyTwin("tiny-wan22", "tiny (Wan 2.2-shaped, two experts)", tiny_base.build_tiny_wan22_pipeline),),
    # diffusers calls a Wan file `wan-i2v-14B` whenever its width is not 1.3B's or 14B's (Wan 2.2 TI2V-5B's, a
    # tiny one's): it is read as Wan, its repository must be given. Image-to-video files are named and refused.
    model_types=("wan-t2v-1.3B", "wan-t2v-14B", "wan-i2v-14B"),
    components_repos={"wan-i2v-14B": None},
    other_models={"img_emb.": "an image-to-video model (`img_emb.…`: its image encoder's projection)"},
)
