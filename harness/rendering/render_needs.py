"""What the selected checks will render, known before anything renders: each render state (the base, an
adapter at scale 1 or 0) is then rendered once, with every prompt any check wants of it, in as few pipeline
calls as the batch size allows, and shared by every check and adapter."""

from __future__ import annotations

from dataclasses import dataclass

from lora_harness.config.check_registry import BASE, BASE_AGAIN, BUILTIN, CONTROL_CHECKS, HELDOUT, MAIN

# The reference must pass the control checks and its untrained twin must fail pixel_diff: they render what those do.
CONTROL_RENDERS = frozenset().union(*(BUILTIN[name].renders for name in CONTROL_CHECKS))


@dataclass(frozen=True)
class RenderNeeds:
    wanted: frozenset[tuple[str, str]]  # (state, prompt set) the selected checks ask of every adapter
    controls: bool  # the reference and its untrained twin render too

    @classmethod
    def of_checks(
        cls, specs, *, features: set[str], corpus: bool, train_images: bool, reference_steps: int
    ) -> RenderNeeds:
        """What the CheckSpecs `specs` render, counting only checks that will: one whose feature models are all
        missing (`features`: those the run has), or that needs a corpus the run lacks, skips before rendering."""
        wanted: set[tuple[str, str]] = set()
        for spec in specs:
            if spec.features and not spec.features & features or spec.needs_corpus and not corpus:
                continue
            wanted |= spec.renders | (spec.train_image_renders if train_images else frozenset())
        return cls(frozenset(wanted), controls=bool(wanted) and reference_steps > 0)

    def prompt_sets(self, state: str, role: str = "adapter") -> list[str]:
        """The prompt sets rendered in `state` for an adapter of `role`: adapter, reference or control."""
        wanted = set() if role == "control" else set(self.wanted)
        if self.controls and (role != "adapter" or state in (BASE, BASE_AGAIN)):
            wanted |= CONTROL_RENDERS
        return [prompts for prompts in (MAIN, HELDOUT) if (state, prompts) in wanted]
