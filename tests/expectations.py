"""What a run of every check looks like, shared by the plugin-level tests."""

# In collection order (the plugin's CHECK_MODULES); frozen_base runs last for its adapter.
CHECKS = (
    "wiring",
    "param_budget",
    "pixel_diff",
    "release_metadata",
    "weight_health",
    "clip_heldout",
    "fid",
    "kid",
    "cmmd",
    "mode_collapse",
    "frozen_base",
)
NEEDS_CORPUS = ("fid", "kid", "cmmd")  # skipped, saying why, without --reference-images
# Without --clip-model the CLIP checks never gate: the embedded base reports the self-test CLIP's figures as skipped,
# other bases skip saying what to pass.
CLIP_CHECKS = ("clip_heldout", "mode_collapse")
SKIPPING = (*NEEDS_CORPUS, *CLIP_CHECKS)
PASSING = len(CHECKS) - len(SKIPPING)  # what a good adapter passes on a base without a CLIP model or corpus


def expected_status(check: str) -> str:
    return "skipped" if check in SKIPPING else "passed"


# The CLIP checks render the held-out prompts too; tests about other checks leave them out (tests/test_quality.py
# covers them).
WITHOUT_CLIP_CHECKS = ("-k", "not clip_heldout and not mode_collapse")
