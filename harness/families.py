"""Model families, told apart by the width the U-Net's cross-attention reads from the text encoder."""

from __future__ import annotations

CROSS_ATTENTION_FAMILIES = {32: "tiny", 64: "tiny SDXL", 768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def family_of_width(cross_attention_width: int | None) -> str:
    if cross_attention_width is None:
        return "unknown"
    return CROSS_ATTENTION_FAMILIES.get(cross_attention_width, f"unknown (cross-attention {cross_attention_width})")


def describe_width(cross_attention_width: int) -> str:
    """'SD2.x (cross-attention 1024)'."""
    return f"{family_of_width(cross_attention_width)} (cross-attention {cross_attention_width})"
