"""Z-Image (Turbo and Base): a single-stream transformer over image and caption tokens together, each refined by
its own blocks first (`noise_refiner`, `context_refiner`), Qwen3's token states through its chat template, Flux's
16-channel VAE; trained by rectified flow, its transformer taking t reversed and predicting x_0 - noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_harness.bases import tiny_base
from lora_harness.bases.families.family import Blocks, Denoiser, Family, Reference, Rendering, TinyTwin
from lora_harness.bases.families.objectives import RectifiedFlow, scaled_latents

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class ReversedFlow(RectifiedFlow):
    """Z-Image's transformer takes a list of [C, frames, H, W] latents and t = 1 - sigma, and returns x_0 - noise:
    the pipeline negates it. The target stays noise - x_0."""

    def predict(self, model, noisy, sigma):
        frames = list(noisy.unsqueeze(2).unbind(0))
        predicted = model(frames, 1 - sigma, **self.conditioning, return_dict=False)[0]
        return -torch.stack(predicted).squeeze(2)


@torch.no_grad()
def training_example(pipeline, pixels, caption: str, device: str) -> ReversedFlow:
    prompt_embeds, _ = pipeline.encode_prompt(prompt=caption, device=device, do_classifier_free_guidance=False)
    return ReversedFlow(scaled_latents(pipeline, pixels, device), {"cap_feats": prompt_embeds})


FAMILY = Family(
    name="Z-Image",
    pipelines=("ZImagePipeline",),
    denoiser=Denoiser(
        architecture="z-image",
        component="transformer",
        classes=("ZImageTransformer2DModel",),
        width=lambda transformer: transformer.config.dim,
        width_label="transformer width",
        width_modules=("attention.to_q",),
        distinctive_modules=("feed_forward.w1", "noise_refiner.", "context_refiner."),
    ),
    widths={3840: "Z-Image", 224: "tiny Z-Image"},
    any_width=True,
    reference=Reference(targets=ATTENTION, example=training_example),
    rendering=Rendering(scale_keyword="joint_attention_kwargs"),
    blocks=Blocks(
        stages={"layers": "main", "noise_refiner": "image-refiner", "context_refiner": "text-refiner"},
        kinds={"attention": "attn", "feed_forward": "ff", "adaLN_modulation": "mod"},
    ),
    lineage_prefixes=("z-image", "z_image", "zimage"),  # ai-toolkit writes `zimage`
    converts_trainer_layouts=True,
    converts_lokr=True,
    tiny=TinyTwin("tiny-z-image", "tiny (Z-Image-shaped)", tiny_base.build_tiny_z_image_pipeline),
    model_types=("z-image-turbo",),
)
