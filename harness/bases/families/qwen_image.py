"""Qwen-Image (and the Qwen-Image-Edit fine-tunes' text-to-image use): an MMDiT of joint blocks in which the text
and the image stream each have their own MLP and modulation, over packed 2x2 latent patches of a video VAE
normalized per channel; Qwen2.5-VL's token states, trained by rectified flow.

At its real width (24 heads of 128: 3072) it is as wide as Flux, with the same attention names: attention-only keys
fit either and are checked on the base given; the per-stream MLPs (`img_mlp`, `txt_mlp`) are Qwen-Image's own."""

from __future__ import annotations

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families import mmdit
from lora_harness.bases.families.family import Blocks, Family, Reference, Rendering, TinyTwin
from lora_harness.bases.families.objectives import RectifiedFlow, normalized_video_latents


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> RectifiedFlow:
    latents = normalized_video_latents(pipeline, pixels, device)  # [1, C, 1 frame, h, w]
    batch, channels, _, height, width = latents.shape
    packed = pipeline._pack_latents(latents, batch, channels, height, width)
    prompt_embeds, mask = pipeline.encode_prompt(prompt=caption, device=device, num_images_per_prompt=1)
    conditioning = {
        "encoder_hidden_states": prompt_embeds,
        "encoder_hidden_states_mask": mask,
        "img_shapes": [[(1, height // 2, width // 2)]],
    }
    return RectifiedFlow(packed, conditioning)  # its transformer takes t in [0, 1]


FAMILY = Family(
    name="Qwen-Image",
    pipelines=("QwenImagePipeline",),
    denoiser=mmdit.denoiser("qwen-image", "QwenImageTransformer2DModel", distinctive_modules=("img_mlp.", "txt_mlp.")),
    widths={3072: "Qwen-Image", 192: "tiny Qwen-Image"},
    any_width=True,
    reference=Reference(targets=mmdit.ATTENTION, example=training_example),
    # Its classifier-free guidance (`true_cfg_scale`) runs only with a negative prompt, which the harness does not
    # give: said so, the pipeline does not warn on every call that it is off.
    rendering=Rendering(scale_keyword="attention_kwargs", call_arguments={"true_cfg_scale": 1.0}),
    blocks=Blocks(
        stages={"transformer_blocks": "joint"},
        kinds={**mmdit.KINDS, "img_mlp": "ff", "txt_mlp": "ff-text", "img_mod": "mod", "txt_mod": "mod-text"},
    ),
    lineage_prefixes=("qwen-image", "qwen_image"),
    converts_trainer_layouts=True,
    tiny=TinyTwin("tiny-qwen-image", "tiny (Qwen-Image-shaped)", tiny_base.build_tiny_qwen_image_pipeline),
    # Its published file (ComfyUI's `qwen_image_bf16.safetensors`) holds diffusers' own names, which diffusers'
    # detection does not name; Qwen-Image 2.1's (`txt_in.text_norm`) is another model.
    model_types=("qwen-image",),
    file_marks=("img_in.weight", "txt_norm.weight", "transformer_blocks.0.img_mod.1.weight"),
    components_repos={"qwen-image": "Qwen/Qwen-Image"},
)
