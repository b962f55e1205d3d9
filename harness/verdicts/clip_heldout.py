"""clip_heldout: prompt-following on prompts the adapter never trained on does not drop beyond a margin."""

from __future__ import annotations

from lora_harness.config.config import REFERENCE_CAPTION
from lora_harness.verdicts.clip_model import self_test_verdict
from lora_harness.verdicts.quality import bootstrap_ci, clip_scores, leaked
from lora_harness.verdicts.release_metadata import flat_metadata, tag_counts
from lora_harness.verdicts.results import ERROR, CheckResult, verdict

CHECK = "clip_heldout"
DEFAULT_HELDOUT_PROMPTS = (
    "a red bicycle leaning against a brick wall",
    "a bowl of fruit on a wooden table",
    "a snowy mountain village at night",
    "a portrait of an old fisherman",
)


def training_captions(given: tuple[str, ...], metadata: dict, is_reference: bool) -> list[str]:
    """What the adapter was trained on: --train-captions (`given`), the Kohya tags in its `metadata`, the reference's
    caption."""
    captions = list(given)
    if is_reference:
        captions.append(REFERENCE_CAPTION)
    return captions + list(tag_counts(flat_metadata(metadata).get("ss_tag_frequency")))


def evaluate_clip_heldout(
    adapter: str, clip, prompts: list[str], captions: list[str], renders, margin: float
) -> CheckResult:
    """`renders(prompts)` -> (base RenderSet, adapted RenderSet) for the prompts kept."""
    leaks = leaked(prompts, captions)
    kept = [p for p in prompts if p not in leaks]
    details = {"model": clip.label, "leaked_prompts": leaks, "training_captions": captions[:20]}
    if not kept:
        message = f"every held-out prompt overlaps the training captions ({'; '.join(leaks)}); pass --heldout-prompts with prompts it never saw"
        return CheckResult(adapter, CHECK, ERROR, None, -margin, message, details)
    base, adapted = renders(kept)
    texts = clip.text_features([prompt for prompt, _ in base.jobs])
    base_scores = clip_scores(base.features(clip.image_features, unit=True), texts)
    adapted_scores = clip_scores(adapted.features(clip.image_features, unit=True), texts)
    differences = adapted_scores - base_scores
    low, high = bootstrap_ci(differences)
    mean = float(differences.mean())
    details.update(
        base_mean=float(base_scores.mean()),
        adapted_mean=float(adapted_scores.mean()),
        ci95=[low, high],
        per_render=[
            {"prompt": p, "seed": s, "base": float(b), "adapted": float(a)}
            for (p, s), b, a in zip(base.jobs, base_scores, adapted_scores)
        ],
    )
    message = (
        f"held-out CLIP score drops: mean adapted - base = {mean:.3g}, 95% CI [{low:.3g}, {high:.3g}] reaches below "
        f"-{margin:g}; the adapter hurts prompt following"
    )
    result = verdict(adapter, CHECK, low > -margin, mean, -margin, message, details)
    return self_test_verdict(result, clip)
