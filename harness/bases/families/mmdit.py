"""What Flux's and SD3's MMDiT transformers share: attention over a text and an image stream in each block, with
the text stream's projections named `add_*`. The reference overfit trains both streams' projections."""

from __future__ import annotations

from lora_harness.bases.families.family import Denoiser, Rendering, attention_inner_width

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
KINDS = {
    "add_q_proj": "attn-text",
    "add_k_proj": "attn-text",
    "add_v_proj": "attn-text",
    "to_add_out": "attn-text",
    "attn": "attn",
    "ff_context": "ff-text",
    "ff": "ff",
    "proj_mlp": "ff",
}


RENDERING = Rendering(scale_keyword="joint_attention_kwargs")


def denoiser(architecture: str, model_class: str, distinctive_modules: tuple[str, ...] = ()) -> Denoiser:
    """An MMDiT `transformer`: its width is the attention's inner width, which every query projection reads."""
    return Denoiser(
        architecture=architecture,
        component="transformer",
        classes=(model_class,),
        width=attention_inner_width,
        width_label="transformer width",
        width_modules=("attn.to_q",),
        distinctive_modules=distinctive_modules,
    )
