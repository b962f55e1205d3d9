"""Adapter kinds the harness recognises by their keys but does not apply. A file of one is valid: it is named for
what it is and for what applies it, never called damaged; none of it is applied, since checking part of an
adapter would validate something else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UnappliedKind:
    name: str
    applied_by: str
    example: Callable[[dict[str, torch.Tensor], dict | None], str | None]  # (tensors, adapter_config) -> a key of it


def _peft_type(tensors, config):
    kind = (config or {}).get("peft_type")
    return f"adapter_config.json: peft_type {kind}" if kind not in (None, "LORA") else None


def _both_experts(tensors, config):
    return next(
        (k for k in tensors if k.startswith(("diffusion_model.transformer_1.", "diffusion_model.transformer_2."))), None
    )


KINDS = (
    UnappliedKind("PEFT adapter of a kind other than LoRA", "peft's `PeftModel.from_pretrained`", _peft_type),
    UnappliedKind(
        "Wan 2.2 LoRA holding both experts in one file, as ai-toolkit writes it without `split_multistage_loras`",
        "ai-toolkit's own loader; with that option, its default, ai-toolkit saves it as two files diffusers loads, "
        "`<name>_high_noise.safetensors` and `<name>_low_noise.safetensors`, which lora-harness checks",
        _both_experts,
    ),
)


def unapplied_kind(tensors: dict[str, torch.Tensor], adapter_config: dict | None) -> tuple[UnappliedKind, str] | None:
    """(kind, an example key or config entry) for a file of a kind the harness does not apply; None otherwise."""
    for kind in KINDS:
        example = kind.example(tensors, adapter_config)
        if example is not None:
            return kind, example
    return None
