"""What a run of every check looks like, shared by the plugin-level tests."""

from lora_harness.config.check_registry import BUILTIN

# In collection order: frozen_base last for its adapter, after what it judges (tests/test_check_registry.py pins it).
CHECKS = tuple(spec.name for spec in BUILTIN.in_collection_order())
NEEDS_CORPUS = tuple(spec.name for spec in BUILTIN if spec.needs_corpus)  # skipped, saying why, without a corpus
# Without --clip-model the CLIP checks never gate: the embedded base reports the self-test CLIP's figures as skipped,
# other bases skip saying what to pass.
CLIP_CHECKS = tuple(spec.name for spec in BUILTIN if spec.features and not spec.needs_corpus)
SKIPPING = (*NEEDS_CORPUS, *CLIP_CHECKS)
PASSING = len(CHECKS) - len(SKIPPING)  # what a good adapter passes on a base without a CLIP model or corpus


def expected_status(check: str) -> str:
    return "skipped" if check in SKIPPING else "passed"


# The CLIP checks render the held-out prompts too; tests about other checks leave them out (tests/test_quality.py
# covers them).
WITHOUT_CLIP_CHECKS = ("-k", "not clip_heldout and not mode_collapse")
