"""Options to config: what the user gave (`GivenOptions`), parsed and validated into the run's `HarnessConfig`, the
base located (a hub id fetched) and its dtype and offloading chosen, before any model loads. A bad value raises a
ValueError naming the option; the plugin makes it a usage error."""

from __future__ import annotations

from pathlib import Path

from lora_harness.bases.base import resolve_dtype, resolve_offload
from lora_harness.bases.components import resolve_components
from lora_harness.bases.resolve import resolve_base
from lora_harness.config import options
from lora_harness.config.check_registry import CheckRegistry
from lora_harness.config.config import (
    DEFAULT_PROMPTS,
    HarnessConfig,
    adapter_specs,
    image_folder,
    read_lines,
    resolve_device,
    writable_folder,
)
from lora_harness.config.option_specs import GivenOptions
from lora_harness.config.shard import parse_shard
from lora_harness.run.regression import parse_tolerances
from lora_harness.verdicts.clip_heldout import DEFAULT_HELDOUT_PROMPTS
from lora_harness.verdicts.inception import check_inception_weights

RENDER_CACHE = "lora_harness_renders"  # the render cache's folder in pytest's cache


def harness_config(given: GivenOptions, registry: CheckRegistry) -> HarnessConfig:
    """The run's config from the options given; ValueError (ConfigError included) naming a bad one."""
    prompts = read_lines("--prompts", given.text("prompts")) if given.text("prompts") else DEFAULT_PROMPTS
    base_model = given.text("base_model")
    offline = given.flag("offline")
    base_components = given.text("base_components") or None
    with given.shown():  # a hub id's download shows its progress
        base_path = resolve_base(base_model, offline)
        components_path = resolve_components(base_model, base_path, base_components, offline)
    device = resolve_device(options.parse_device(given.text("device")), given.worker_index)
    dtype, dtype_choice = resolve_dtype(options.parse_dtype(given.text("dtype")), device, base_model, base_path)
    offload_requested = given.flag("offload")
    offload, offload_choice = resolve_offload(offload_requested, device)
    return HarnessConfig(
        adapters=adapter_specs(given.adapters),
        base_model=base_model,
        base_path=base_path,
        base_components=base_components,
        components_path=components_path,
        offline=offline,
        render_size=_optional(given, "render_size", options.parse_render_size),
        render_steps=options.parse_positive_int(given.text("render_steps"), "--render-steps"),
        render_seeds=options.parse_positive_int(given.text("render_seeds"), "--render-seeds"),
        render_frames=options.parse_positive_int(given.text("render_frames"), "--render-frames"),
        render_batch_size=options.parse_positive_int(given.text("render_batch_size"), "--render-batch-size"),
        render_cache=_render_cache(given),
        prompts=prompts,
        reference_steps=options.parse_non_negative_int(given.text("reference_steps"), "--reference-steps"),
        report_dir=writable_folder("--report-dir", given.text("report_dir")),
        device=device,
        dtype=dtype,
        dtype_choice=dtype_choice,
        offload_requested=offload_requested,
        offload=offload,
        offload_choice=offload_choice,
        param_budget=options.parse_param_budget(given.text("param_budget")),
        diff_floor=options.parse_non_negative_float(given.text("diff_floor"), "--diff-floor"),
        dead_share=options.parse_fraction(given.text("dead_share"), "--dead-share"),
        norm_outlier_k=options.parse_non_negative_float(given.text("norm_outlier_k"), "--norm-outlier-k"),
        min_effective_rank_ratio=options.parse_fraction(
            given.text("min_effective_rank_ratio"), "--min-effective-rank-ratio"
        ),
        heldout_prompts=read_lines("--heldout-prompts", given.text("heldout_prompts"))
        if given.text("heldout_prompts")
        else DEFAULT_HELDOUT_PROMPTS,
        clip_margin=options.parse_non_negative_float(given.text("clip_margin"), "--clip-margin"),
        clip_model=given.text("clip_model") or None,
        train_captions=read_lines("--train-captions", given.text("train_captions"))
        if given.text("train_captions")
        else (),
        reference_images=_optional(given, "reference_images", lambda value: image_folder("--reference-images", value)),
        inception_weights=_optional(given, "inception_weights", check_inception_weights),
        train_images=_optional(given, "train_images", lambda value: image_folder("--train-images", value)),
        diversity_floor=options.parse_fraction(given.text("diversity_floor"), "--diversity-floor"),
        copy_similarity=options.parse_fraction(given.text("copy_similarity"), "--copy-similarity"),
        require_metadata=given.flag("require_metadata"),
        shard=_optional(given, "shard", lambda value: parse_shard(value, len(given.adapters))),
        compare_to=_optional(given, "compare_to", lambda value: Path(value).expanduser().resolve()),
        compare_tolerances=parse_tolerances(given.tolerances, registry),
    )


def _optional(given: GivenOptions, dest: str, parse):
    """The option's value parsed, or None where none is given."""
    text = given.text(dest)
    return parse(text) if text else None


def _render_cache(given: GivenOptions) -> Path | None:
    if given.flag("no_render_cache"):
        return None
    if given.text("render_cache"):
        return Path(given.text("render_cache")).expanduser().resolve()
    return given.cache_folder(RENDER_CACHE)
