"""frozen_base: base parameters are bitwise identical at every stage of the run; only LoRA parameters trained."""

from __future__ import annotations

from lora_harness.bases.digests import Evidence
from lora_harness.verdicts.results import verdict

CHECK = "frozen_base"
SHOWN = 3  # parameter names a message lists per stage


def evaluate_frozen_base(adapter: str, parameters: int, stages: dict[str, Evidence], trainable: list[str] | None):
    """`stages`: stage name -> what the look at the base then found; `parameters`: how many the first digests
    hold; `trainable`: parameters that had requires_grad in training."""
    changed = {stage: evidence.changed for stage, evidence in stages.items() if evidence.changed}
    leaked = [name for name in trainable or [] if "lora_" not in name]
    problems = [
        f"{len(names)} base parameters changed {stage}: {', '.join(names[:SHOWN])}"
        + (", …" if len(names) > SHOWN else "")
        for stage, names in changed.items()
    ]
    if leaked:
        problems.append(f"{len(leaked)} non-LoRA parameters had requires_grad during training, first {leaked[0]}")
    details = {
        "parameters": parameters,
        "stages": ["before loading", *stages],
        "changed": {stage: names[:20] for stage, names in changed.items()},
        "trainable_non_lora": leaked[:20],
        # Between the session's full digests, a stage digests only what the adapter targets and what moved.
        "digested": {stage: evidence.digested for stage, evidence in stages.items()},
    }
    changed_count = sum(len(names) for names in changed.values())
    return verdict(adapter, CHECK, not problems, changed_count, 0, "; ".join(problems), details)
