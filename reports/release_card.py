"""release_card.md per adapter, after the LORA-FINE checklist: what a release of this adapter can claim."""

from __future__ import annotations

from lora_harness.release_metadata import RELEASE_FIELDS, flat_metadata, missing_fields, recorded, tag_counts

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
    lines = [f"# Release card: {adapter['name']}", ""]
    verdicts = {r["status"] for r in results}
    overall = "error" if "error" in verdicts else "failed" if "failed" in verdicts else "passed" if results else "not checked"
    lines += [f"Verdict of this run: **{overall}** (lora-harness {document['harness_version']}).", ""]

    lines += ["## L: Label & clean dataset", ""]
    tags = _top_tags(flat.get("ss_tag_frequency"))
    lines.append(f"- dataset folders: {flat.get('ss_dataset_dirs', 'not recorded')}")
    lines.append(f"- most frequent caption tags: {', '.join(tags) if tags else 'not recorded'}")

    lines += ["", "## O: Obtain base model checksum", ""]
    base = document["base"]
    lines.append(f"- base under test: `{base['model']}` ({base['family']}), parameter fingerprint `{base['fingerprint']}`")
    for key in RELEASE_FIELDS["base model hash"]:
        if key in flat:
            lines.append(f"- recorded `{key}`: `{flat[key]}` (a hash of the single-file checkpoint it was trained on)")
    recorded_base = flat.get("base_model_name_or_path") or flat.get("ss_sd_model_name")
    lines.append(f"- recorded base: {recorded_base or 'not recorded'}")

    lines += ["", "## R: Rank", ""]
    lines.append(f"- rank {adapter.get('rank')}, alpha {adapter.get('alpha')}, applied scale {adapter.get('scale')}")
    lines.append(f"- LoRA parameters injected: {adapter.get('lora_params')}")

    lines += ["", "## A: Adapter insertion points", ""]
    lines.append(f"- {details.get('target_modules', '?')} modules: {', '.join(details.get('target_kinds') or []) or 'unknown'}")
    lines.append(f"- tensors applied / in the file: {adapter.get('tensors_applied')} / {adapter.get('tensors')}")

    lines += ["", "## F: Fine-tune hyperparameters", ""]
    for name, keys in HYPERPARAMETERS.items():
        value = recorded(flat, keys)
        value = "not recorded" if value is None else value
        lines.append(f"- {name}: {value}")

    lines += ["", "## I: Inference test plan", ""]
    lines.append(f"- prompts: {'; '.join(settings['prompts'])}")
    lines.append(f"- seeds per prompt: {settings['render_seeds']} (seeds 0..{settings['render_seeds'] - 1})")
    guidance = base.get("guidance_scale", "the base pipeline's default")  # known once the base is loaded
    lines.append(f"- steps {settings['render_steps']}, guidance {guidance}, size {settings['render_size'] or 'native'}")

    lines += ["", "## N: Numeric validation", "", "| check | status | value | threshold |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['check']} | {r['status']} | {r['value']} | {r['threshold']} |" for r in results]

    lines += ["", "## E: Export with metadata", ""]
    lines.append(f"- format {adapter.get('format')} ({adapter.get('kind') or 'kind unknown'}), SHA-256 `{adapter.get('sha256')}`")
    carried = sorted(k for k in flat if k != "format")
    lines.append(f"- the file carries: {', '.join(carried[:40]) if carried else 'no metadata'}")
    lacking = missing_fields(flat)
    lines.append(f"- it lacks: {', '.join(lacking) if lacking else 'nothing a release needs'}")
    return "\n".join(lines) + "\n"


def _top_tags(raw, count: int = 10) -> list[str]:
    totals = tag_counts(raw)
    return [f"{tag} ({n})" for tag, n in sorted(totals.items(), key=lambda item: -item[1])[:count]]
