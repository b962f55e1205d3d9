"""release_metadata: what the adapter file says about itself agrees with the run, and carries what a release needs."""

from __future__ import annotations

import json
import re

from lora_harness.bases.families import claimed_lineage
from lora_harness.verdicts.results import verdict

CHECK = "release_metadata"

# Each field a release needs, and the metadata keys (Kohya `ss_*`, PEFT config, diffusers metadata) that hold it.
RELEASE_FIELDS = {
    "base model": ("ss_sd_model_name", "ss_base_model_version", "modelspec.architecture", "base_model_name_or_path"),
    "base model hash": ("ss_new_sd_model_hash", "ss_sd_model_hash"),
    "rank": ("ss_network_dim", "r"),
    "alpha": ("ss_network_alpha", "lora_alpha"),
    "learning rate": ("ss_learning_rate", "ss_unet_lr", "learning_rate"),
    "training steps": ("ss_steps", "ss_max_train_steps", "max_train_steps"),
    "dataset": ("ss_dataset_dirs", "ss_tag_frequency", "ss_datasets"),
}
# Kohya's base hashes (sd-scripts `train_network.py`, when the base is a file): `ss_new_sd_model_hash` is
# `train_util.calculate_sha256`, the whole file's SHA-256 (AUTOMATIC1111 shows its first 10 digits);
# `ss_sd_model_hash` is `train_util.model_hash`, A1111's legacy hash. Each with the single-file base's hashes it
# may equal (`single_file.checkpoint_hashes`).
BASE_HASHES = {
    "ss_new_sd_model_hash": ("sha256", "a1111_short_hash"),
    "ss_sd_model_hash": ("legacy_model_hash",),
}
HEX = re.compile(r"[0-9a-f]+")  # sd-scripts writes "NOFILE" or "IsADirectory" where it could not hash the base


def flat_metadata(metadata: dict) -> dict:
    """The file's `__metadata__`, its PEFT `adapter_config`, and diffusers' `lora_adapter_metadata`, in one dict."""
    flat = {k: v for k, v in metadata.items() if k not in ("adapter_config", "lora_adapter_metadata")}
    flat.update({k: v for k, v in (metadata.get("adapter_config") or {}).items() if v not in (None, "", {}, [])})
    try:
        config = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        config = {}
    flat.update(config if isinstance(config, dict) else {})  # a number or a list there: the loader names the file
    return flat


def claimed_family(flat: dict) -> str | None:
    for key in ("ss_base_model_version", "modelspec.architecture"):
        family = claimed_lineage(str(flat.get(key, "")))
        if family is not None:
            return family
    if str(flat.get("ss_v2", "")).lower() == "true":
        return "SD2.x"
    return None


def recorded(flat: dict, keys) -> object | None:
    """The first of `keys` the metadata really holds (trainers write "None" for what they did not record)."""
    return next((flat[k] for k in keys if flat.get(k) not in (None, "", "None")), None)


def missing_fields(flat: dict) -> list[str]:
    return [field for field, keys in RELEASE_FIELDS.items() if recorded(flat, keys) is None]


def base_hash_comparison(flat: dict, single_file: dict | None) -> dict:
    """Each base hash the file records, against the single-file base's: {key: {recorded, base, matches}}; {} when
    the base is not a single file (a folder has no checkpoint hash) or the file records none."""
    if not single_file:
        return {}
    compared = {}
    for key, forms in BASE_HASHES.items():
        value = str(recorded(flat, (key,)) or "").strip().lower()
        if HEX.fullmatch(value):
            compared[key] = {
                "recorded": value,
                "base": single_file[forms[0]],
                "matches": any(value == single_file[form] for form in forms),
            }
    return compared


def evaluate_release_metadata(
    adapter: str, metadata: dict, base: dict, base_family: str | None, base_is_hub_id: bool, require: bool
):
    """`base_family` is the base's lineage as trainers name it (`Signature.lineage`)."""
    flat = flat_metadata(metadata)
    contradictions = []
    family = claimed_family(flat)
    if family is not None and base_family is not None and family != base_family:
        contradictions.append(f"the metadata says it was trained on {family}, the base under test is {base_family}")
    recorded_base = flat.get("base_model_name_or_path")
    if base_is_hub_id and recorded_base and recorded_base != base["model"]:
        contradictions.append(f"the metadata names base {recorded_base!r}, the base under test is {base['model']!r}")
    hashes = base_hash_comparison(flat, base.get("single_file"))
    for key, compared in hashes.items():
        if not compared["matches"]:
            contradictions.append(
                f"the metadata records {key} {compared['recorded']!r}, the base under test "
                f"({base['single_file']['path']}) has {compared['base']!r}: it was trained on another checkpoint"
            )
    missing = missing_fields(flat)
    problems = list(contradictions)
    if require and missing:
        problems.append(f"--require-metadata: the file lacks {', '.join(missing)}")
    details = {
        "claimed_family": family,
        "recorded_base": recorded_base or flat.get("ss_sd_model_name"),
        "recorded_base_hashes": {k: flat[k] for k in RELEASE_FIELDS["base model hash"] if k in flat},
        "base_fingerprint": base.get("fingerprint"),
        "base_hashes": hashes,  # the release card's base checksum: what the file records against the base file's
        "base_hash_matched": bool(hashes) and all(compared["matches"] for compared in hashes.values()),
        "missing_release_fields": missing,
        "required": require,
    }
    message = "; ".join(problems) + "; fix the metadata or check the adapter against the base it names"
    return verdict(adapter, CHECK, not problems, len(problems), 0, message, details)


def tag_counts(raw) -> dict[str, int]:
    """Kohya's `ss_tag_frequency` (JSON `{folder: {tag: count}}`) summed over folders; {} when absent or malformed."""
    try:
        folders = json.loads(raw) if isinstance(raw, str) else raw or {}
        totals: dict[str, int] = {}
        for tags in folders.values():
            for tag, count in tags.items():
                totals[tag] = totals.get(tag, 0) + int(count)
        return totals
    except (ValueError, AttributeError, TypeError):
        return {}
