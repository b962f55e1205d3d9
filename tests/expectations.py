"""What a run of every check looks like, shared by the plugin-level tests."""

# In collection order (the plugin's CHECK_MODULES); frozen_base runs last for its adapter.
CHECKS = (
    "wiring", "param_budget", "pixel_diff", "release_metadata", "weight_health",
    "clip_heldout", "fid", "kid", "cmmd", "mode_collapse", "frozen_base",
)
NEEDS_CORPUS = ("fid", "kid", "cmmd")  # skipped, saying why, without --reference-images
PASSING = len(CHECKS) - len(NEEDS_CORPUS)  # what a good adapter passes on the tiny base without a corpus


def expected_status(check: str) -> str:
    return "skipped" if check in NEEDS_CORPUS else "passed"

# The CLIP checks run on the tiny base with a self-test CLIP whose verdicts mean nothing and move with the render
# settings; tests about other checks leave them out (tests/test_quality.py covers them).
WITHOUT_CLIP_CHECKS = ("-k", "not clip_heldout and not mode_collapse")
CLIP_CHECKS = 2
