"""Model families: how a base and an adapter are told apart, and what each family names its denoiser's parts.

A family's signature is its denoiser's architecture and the width that decides every LoRA shape: the text width
a U-Net's cross-attention reads (768 SD1.x, 1024 SD2.x, 2048 SDXL) or an MMDiT transformer's inner width (Flux
3072, SD3 medium 1536, SD3.5 large 2432).
"""

from __future__ import annotations

from dataclasses import dataclass

UNET = "unet"
FLUX = "flux"
SD3 = "sd3"
TRANSFORMER_CLASSES = {"FluxTransformer2DModel": FLUX, "SD3Transformer2DModel": SD3}

FAMILY_NAMES = {
    (UNET, 32): "tiny",
    (UNET, 64): "tiny SDXL",
    (UNET, 768): "SD1.x",
    (UNET, 1024): "SD2.x",
    (UNET, 2048): "SDXL",
    (FLUX, 96): "tiny Flux",
    (FLUX, 3072): "Flux",
    (SD3, 128): "tiny SD3",
    (SD3, 1536): "SD3 medium",
    (SD3, 2432): "SD3.5 large",
}
WIDTH_NAMES = {UNET: "cross-attention", FLUX: "transformer width", SD3: "transformer width"}
# The family as trainers' metadata names it (`ss_base_model_version`: sd_v1, sdxl_base_v1-0, flux1, sd3, ...): the
# tiny U-Nets stand for the family they are shaped like; an MMDiT's lineage is its architecture at any width.
UNET_LINEAGES = {32: "SD1.x", 768: "SD1.x", 1024: "SD2.x", 64: "SDXL", 2048: "SDXL"}
TRANSFORMER_LINEAGES = {FLUX: "Flux", SD3: "SD3"}

# The reference overfit's rank-4 targets: the denoiser's attention projections (MMDiT: both streams of a block).
MMDIT_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
REFERENCE_TARGETS = {UNET: ("to_q", "to_k", "to_v", "to_out.0"), FLUX: MMDIT_ATTENTION, SD3: MMDIT_ATTENTION}
# param_budget's and weight_health's blocks: the family's own names for its stages and attention kinds.
STAGES = {
    UNET: {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"},
    FLUX: {"transformer_blocks": "double", "single_transformer_blocks": "single"},
    SD3: {"transformer_blocks": "joint"},
}
MMDIT_KINDS = {
    "add_q_proj": "attn-text",
    "add_k_proj": "attn-text",
    "add_v_proj": "attn-text",
    "to_add_out": "attn-text",
    "attn": "attn",
    "ff_context": "ff-text",
    "ff": "ff",
    "proj_mlp": "ff",
}
UNET_KINDS = {
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
}
KINDS = {UNET: UNET_KINDS, FLUX: MMDIT_KINDS, SD3: MMDIT_KINDS}
DENOISERS = {UNET: "unet", FLUX: "transformer", SD3: "transformer"}  # the component holding each one's denoiser


@dataclass(frozen=True)
class Signature:
    architecture: str  # UNET | FLUX | SD3
    width: int

    @property
    def family(self) -> str:
        return FAMILY_NAMES.get((self.architecture, self.width), f"unknown ({self.width_label})")

    @property
    def width_label(self) -> str:
        return f"{WIDTH_NAMES[self.architecture]} {self.width}"

    @property
    def lineage(self) -> str | None:
        """'SD1.x', 'SD2.x', 'SDXL', 'Flux' or 'SD3'; None for a U-Net of no known width."""
        if self.architecture == UNET:
            return UNET_LINEAGES.get(self.width)
        return TRANSFORMER_LINEAGES[self.architecture]

    def __str__(self) -> str:
        """'SD2.x (cross-attention 1024)'."""
        return f"{self.family} ({self.width_label})"


def is_denoiser(component: str) -> bool:
    return component in DENOISERS.values()


def transformer_architecture(width: int, module_names) -> str:
    """Flux or SD3, for adapter keys on a `transformer`: by the width when it is a known one, else by Flux's
    single-stream blocks, which SD3 lacks."""
    known = [
        architecture for (architecture, known_width) in FAMILY_NAMES if known_width == width and architecture != UNET
    ]
    if len(known) == 1:
        return known[0]
    return FLUX if any("single_transformer_blocks." in name for name in module_names) else SD3


def denoiser_of(pipeline):
    """The pipeline's U-Net or transformer."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def pipeline_signature(pipeline) -> Signature:
    unet = getattr(pipeline, "unet", None)
    if unet is not None:
        return Signature(UNET, unet.config.cross_attention_dim)
    transformer = pipeline.transformer
    architecture = TRANSFORMER_CLASSES[type(transformer).__name__]
    return Signature(architecture, transformer.config.num_attention_heads * transformer.config.attention_head_dim)


def block_of(module: str, architecture: str = UNET) -> str:
    """'unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k' -> 'down/attn2';
    'transformer.single_transformer_blocks.3.attn.to_q' (Flux) -> 'single/attn'; a text encoder's -> its component."""
    parts = module.split(".")
    if not is_denoiser(parts[0]):
        return parts[0]
    stage = next((STAGES[architecture][p] for p in parts if p in STAGES[architecture]), "other")
    kinds = [p.split("+")[0] for p in reversed(parts)]  # a fused module 'attn.add_q_proj+add_k_proj+add_v_proj'
    kind = next((KINDS[architecture][p] for p in kinds if p in KINDS[architecture]), "other")
    return f"{stage}/{kind}"
