"""A base's parameter and module names as they were before adapters wrapped its layers: peft moves a wrapped layer's
weight to `<module>.base_layer.weight` (nested once per adapter kind) and adds its own parameters beside it."""

from __future__ import annotations

import re

TUNER_PARAMETERS = ("lora_", "lokr_", "hada_")  # how peft's LoRA (and DoRA), LoKr and LoHa layers name their parameters


def is_tuner_parameter(name: str) -> bool:
    return any(part.startswith(TUNER_PARAMETERS) for part in name.split("."))


def unwrapped_name(name: str) -> str:
    """A module or parameter name as it was before adapters (of one kind or several, nested) wrapped it."""
    return re.sub(r"(\.base_layer)+(?=\.|$)", "", name)
