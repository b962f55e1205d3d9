"""frozen_base: base parameters are bitwise identical at every stage of the run; only LoRA parameters trained."""

from __future__ import annotations

from .digests import changed_parameters
from .results import verdict

CHECK = "frozen_base"


def evaluate_frozen_base(adapter: str, before: dict[str, str], stages: dict[str, dict[str, str]], trainable: list[str] | None):
    """`stages`: stage name -> digests taken then; `trainable`: parameters that had requires_grad in training."""
    changed = {stage: changed_parameters(before, digests) for stage, digests in stages.items()}
    changed = {stage: names for stage, names in changed.items() if names}
    leaked = [name for name in trainable or [] if "lora_" not in name]
    problems = [f"{len(names)} base parameters changed {stage}, first {names[0]}" for stage, names in changed.items()]
    if leaked:
        problems.append(f"{len(leaked)} non-LoRA parameters had requires_grad during training, first {leaked[0]}")
    details = {
        "parameters": len(before),
        "stages": ["before loading", *stages],
        "changed": {stage: names[:20] for stage, names in changed.items()},
        "trainable_non_lora": leaked[:20],
    }
    changed_count = sum(len(names) for names in changed.values())
    return verdict(adapter, CHECK, not problems, changed_count, 0, "; ".join(problems), details)
