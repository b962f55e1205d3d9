"""Model families: how a base and an adapter are told apart, and what each family names its denoiser's parts.

A family's signature is its denoiser's architecture and the width that decides every LoRA shape: the text width
a U-Net's cross-attention reads (768 SD1.x, 1024 SD2.x, 2048 SDXL) or a Flux transformer's inner width.
"""

from __future__ import annotations

from dataclasses import dataclass

UNET = "unet"
FLUX = "flux"

FAMILY_NAMES = {
    (UNET, 32): "tiny",
    (UNET, 64): "tiny SDXL",
    (UNET, 768): "SD1.x",
    (UNET, 1024): "SD2.x",
    (UNET, 2048): "SDXL",
    (FLUX, 96): "tiny Flux",
    (FLUX, 3072): "Flux",
}
WIDTH_NAMES = {UNET: "cross-attention", FLUX: "transformer width"}

# The reference overfit's rank-4 targets: the denoiser's attention projections (Flux: both streams of a block).
REFERENCE_TARGETS = {
    UNET: ("to_q", "to_k", "to_v", "to_out.0"),
    FLUX: ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
}
# param_budget's and weight_health's blocks: the family's own names for its stages and attention kinds.
STAGES = {
    UNET: {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"},
    FLUX: {"transformer_blocks": "double", "single_transformer_blocks": "single"},
}
KINDS = {
    UNET: {"attn1": "attn1", "attn2": "attn2"},
    FLUX: {"add_q_proj": "attn-text", "add_k_proj": "attn-text", "add_v_proj": "attn-text", "to_add_out": "attn-text",
           "attn": "attn", "ff_context": "ff-text", "ff": "ff", "proj_mlp": "ff"},
}
DENOISERS = {UNET: "unet", FLUX: "transformer"}  # the pipeline component holding each architecture's denoiser


@dataclass(frozen=True)
class Signature:
    architecture: str  # UNET | FLUX
    width: int

    @property
    def family(self) -> str:
        return FAMILY_NAMES.get((self.architecture, self.width), f"unknown ({self.width_label})")

    @property
    def width_label(self) -> str:
        return f"{WIDTH_NAMES[self.architecture]} {self.width}"

    def __str__(self) -> str:
        """'SD2.x (cross-attention 1024)'."""
        return f"{self.family} ({self.width_label})"


def architecture_of(component: str) -> str | None:
    """The denoiser architecture of a pipeline component; None for a text encoder."""
    return {denoiser: architecture for architecture, denoiser in DENOISERS.items()}.get(component)


def denoiser_of(pipeline):
    """The pipeline's U-Net or transformer."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def pipeline_signature(pipeline) -> Signature:
    unet = getattr(pipeline, "unet", None)
    if unet is not None:
        return Signature(UNET, unet.config.cross_attention_dim)
    config = pipeline.transformer.config
    return Signature(FLUX, config.num_attention_heads * config.attention_head_dim)


def block_of(module: str) -> str:
    """'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'down/attn2';
    'transformer.single_transformer_blocks.3.attn.to_q' -> 'single/attn'; a text encoder's -> its component."""
    parts = module.split(".")
    architecture = architecture_of(parts[0])
    if architecture is None:
        return parts[0]
    stage = next((STAGES[architecture][p] for p in parts if p in STAGES[architecture]), "other")
    kind = next((KINDS[architecture][p] for p in reversed(parts) if p in KINDS[architecture]), "other")
    return f"{stage}/{kind}"
