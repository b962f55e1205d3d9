"""What the selected checks will render, known before anything renders: each render state (the base, an
adapter at scale 1 or 0) is then rendered once, with every prompt any check wants of it, in as few pipeline
calls as the batch size allows, and shared by every check and adapter."""

from __future__ import annotations

from dataclasses import dataclass

BASE, ADAPTED, AT_ZERO, BASE_AGAIN = "base", "adapted", "adapted at scale 0", "base again"
MAIN, HELDOUT = "main", "held-out"  # --prompts and --heldout-prompts

_SHARED = {(BASE, MAIN), (ADAPTED, MAIN)}
CHECK_RENDERS = {
    "wiring": _SHARED | {(AT_ZERO, MAIN)},
    "pixel_diff": _SHARED | {(BASE_AGAIN, MAIN)},
    "frozen_base": {(ADAPTED, MAIN)},  # its "after rendering" stage
    "clip_heldout": {(BASE, HELDOUT), (ADAPTED, HELDOUT)},
    "fid": _SHARED,
    "kid": _SHARED,
    "cmmd": _SHARED,
    "mode_collapse": _SHARED,
}
CLIP_CHECKS = {"clip_heldout", "fid", "kid", "cmmd", "mode_collapse"}
CORPUS_CHECKS = {"fid", "kid", "cmmd"}
INCEPTION_CHECKS = {"fid", "kid"}  # Inception features when given, else the CLIP's
# The reference must pass wiring and pixel_diff, its untrained twin must fail pixel_diff.
CONTROL_RENDERS = CHECK_RENDERS["wiring"] | CHECK_RENDERS["pixel_diff"]


@dataclass(frozen=True)
class RenderNeeds:
    wanted: frozenset[tuple[str, str]]  # (state, prompt set) the selected checks ask of every adapter
    controls: bool  # the reference and its untrained twin render too

    @classmethod
    def of_checks(
        cls, checks, *, clip: bool, inception: bool, corpus: bool, train_images: bool, reference_steps: int
    ) -> RenderNeeds:
        """Only checks that will render count: a CLIP check without a CLIP model (fid and kid: nor Inception),
        or fid/kid/cmmd without a corpus, skip before rendering anything."""
        wanted: set[tuple[str, str]] = set()
        for check in checks:
            has_features = clip or inception and check in INCEPTION_CHECKS
            if check in CLIP_CHECKS and not has_features or check in CORPUS_CHECKS and not corpus:
                continue
            wanted |= CHECK_RENDERS.get(check, set())
            if check == "mode_collapse" and train_images:
                wanted.add((ADAPTED, HELDOUT))  # copies of training images are looked for on held-out prompts
        return cls(frozenset(wanted), controls=bool(wanted) and reference_steps > 0)

    def prompt_sets(self, state: str, role: str = "adapter") -> list[str]:
        """The prompt sets rendered in `state` for an adapter of `role`: adapter, reference or control."""
        wanted = set() if role == "control" else set(self.wanted)
        if self.controls and (role != "adapter" or state in (BASE, BASE_AGAIN)):
            wanted |= CONTROL_RENDERS
        return [prompts for prompts in (MAIN, HELDOUT) if (state, prompts) in wanted]
