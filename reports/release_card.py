"""release_card.md per adapter, after the LORA-FINE checklist: what a release of this adapter can claim.

Names, metadata and prompts come from strangers and Markdown viewers render raw HTML and links, so every such value
goes in as `text` (escaped) or `code` (a code span it cannot leave), never as Markdown of its own.
"""

from __future__ import annotations

import re
from html import escape

from lora_harness.inert_text import visible
from lora_harness.verdicts.release_metadata import RELEASE_FIELDS, flat_metadata, missing_fields, recorded, tag_counts
from lora_harness.verdicts.results import adapter_verdict

# Emphasis, code, links and images, table cells, strikethrough, and autolinks (`https:`, `a@b.c`): backslashed.
MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]|~:@])")

HYPERPARAMETERS = {
    "learning rate": ("ss_learning_rate", "ss_unet_lr"),
    "batch size": ("ss_total_batch_size", "ss_batch_size_per_device"),
    "steps": ("ss_steps", "ss_max_train_steps"),
    "epochs": ("ss_num_epochs", "ss_epoch"),
    "optimizer": ("ss_optimizer",),
    "seed": ("ss_seed",),
}


def release_card(adapter: dict, document: dict) -> str:
    flat = flat_metadata(adapter.get("metadata") or {})
    results = [r for r in document["results"] if r["adapter"] == adapter["name"]]
    details = adapter.get("details") or {}
    settings = document["settings"]
    lines = [f"# Release card: {text(adapter['name'])}", ""]
    overall = adapter_verdict(r["status"] for r in results)
    lines += [f"Verdict of this run: **{overall}** (lora-harness {document['harness_version']}).", ""]

    lines += ["## L: Label & clean dataset", ""]
    tags = _top_tags(flat.get("ss_tag_frequency"))
    lines.append(f"- dataset folders: {text(flat.get('ss_dataset_dirs', 'not recorded'))}")
    lines.append(f"- most frequent caption tags: {', '.join(tags) if tags else 'not recorded'}")

    lines += ["", "## O: Obtain base model checksum", ""]
    base = document["base"]
    fingerprint = base["fingerprint"]
    lines.append(f"- base under test: {code(base['model'])} ({base['family']}), parameter fingerprint `{fingerprint}`")
    single_file = base.get("single_file")
    if single_file:
        lines.append(
            f"- base checkpoint SHA-256 `{single_file['sha256']}`, legacy hash `{single_file['legacy_model_hash']}`"
        )
    compared = _base_hash_comparison(results)
    for key in RELEASE_FIELDS["base model hash"]:
        if key in flat:
            if key in compared:
                hashed = (
                    "matches the base under test" if compared[key]["matches"] else "does NOT match the base under test"
                )
            else:
                hashed = "a hash of the single-file checkpoint it was trained on"
            lines.append(f"- recorded `{key}`: {code(flat[key])} ({hashed})")
    recorded_base = flat.get("base_model_name_or_path") or flat.get("ss_sd_model_name")
    lines.append(f"- recorded base: {text(recorded_base or 'not recorded')}")

    lines += ["", "## R: Rank", ""]
    lines.append(f"- rank {adapter.get('rank')}, alpha {adapter.get('alpha')}, applied scale {adapter.get('scale')}")
    lines.append(f"- LoRA parameters injected: {adapter.get('lora_params')}")

    lines += ["", "## A: Adapter insertion points", ""]
    kinds = ", ".join(text(kind) for kind in details.get("target_kinds") or []) or "unknown"
    lines.append(f"- {details.get('target_modules', '?')} modules: {kinds}")
    replaced = details.get("replaced_modules")
    if replaced:
        lines.append(f"- replaced whole (PEFT `modules_to_save`): {', '.join(text(name) for name in replaced)}")
    lines.append(f"- tensors applied / in the file: {adapter.get('tensors_applied')} / {adapter.get('tensors')}")

    lines += ["", "## F: Fine-tune hyperparameters", ""]
    for name, keys in HYPERPARAMETERS.items():
        value = recorded(flat, keys)
        lines.append(f"- {name}: {'not recorded' if value is None else text(value)}")

    lines += ["", "## I: Inference test plan", ""]
    lines.append(f"- prompts: {'; '.join(text(prompt) for prompt in settings['prompts'])}")
    lines.append(f"- seeds per prompt: {settings['render_seeds']} (seeds 0..{settings['render_seeds'] - 1})")
    guidance = base.get("guidance_scale", "the base pipeline's default")  # known once the base is loaded
    guidance = "none (the pipeline's default)" if guidance is None else guidance
    lines.append(f"- steps {settings['render_steps']}, guidance {guidance}, size {settings['render_size'] or 'native'}")

    lines += ["", "## N: Numeric validation", "", "| check | status | value | threshold |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['status']} | {text(r['value'])} | {text(r['threshold'])} |" for r in results]

    lines += ["", "## E: Export with metadata", ""]
    kind = text(adapter.get("kind") or "kind unknown")
    lines.append(f"- format {text(adapter.get('format'))} ({kind}), SHA-256 `{adapter.get('sha256')}`")
    carried = sorted(k for k in flat if k != "format")
    lines.append(f"- the file carries: {', '.join(text(k) for k in carried[:40]) if carried else 'no metadata'}")
    lacking = missing_fields(flat)
    lines.append(f"- it lacks: {', '.join(lacking) if lacking else 'nothing a release needs'}")
    return "\n".join(lines) + "\n"


def text(value) -> str:
    """`value` as literal Markdown text on one line: HTML's `<`, `>` and `&` as entities (so no tag, comment or
    entity of the file's survives), Markdown's punctuation backslashed, `www.` broken so no autolink forms, and
    control characters written as escapes (a newline would start a block of the file's choosing)."""
    literal = MARKDOWN_PUNCTUATION.sub(r"\\\1", visible(value))
    return re.sub(r"(?i)(www)\.", r"\1\\.", escape(literal, quote=False))


def code(value) -> str:
    """`value` in a code span, whose content Markdown shows as is: fenced by more backticks than it holds."""
    literal = visible(value)  # used outside tables only: GFM would split a cell at a pipe even in a code span
    fence = "`" * (max((len(run) for run in re.findall("`+", literal)), default=0) + 1)
    padding = " " if literal.startswith(("`", " ")) or literal.endswith(("`", " ")) else ""
    return f"{fence}{padding}{literal}{padding}{fence}"


def _top_tags(raw, count: int = 10) -> list[str]:
    totals = tag_counts(raw)
    return [f"{text(tag)} ({n})" for tag, n in sorted(totals.items(), key=lambda item: -item[1])[:count]]


def _base_hash_comparison(results: list[dict]) -> dict:
    """release_metadata's comparison of the recorded base hashes with the single-file base's, where it ran."""
    check = next((r for r in results if r["check"] == "release_metadata"), None)
    return (check or {}).get("details", {}).get("base_hashes") or {}
