"""The render phase two ways, the harness's and the plain diffusers script's: the same renders (base, adapted,
adapted at scale 0, base again: what wiring and pixel_diff need) on the same base. Shared by the timing and
the memory benchmarks. LORA_BENCH_BASE picks the base (default: the embedded tiny one)."""

from __future__ import annotations

import os
from pathlib import Path

from plain_mechanical import render_states

from lora_harness.bases.base import load_base
from lora_harness.bases.resolve import resolve_base
from lora_harness.config.config import AdapterSpec, HarnessConfig
from lora_harness.config.options import ParamBudget
from lora_harness.rendering.renders import GUIDANCE_SCALE
from lora_harness.run.session import HarnessSession

BASE = os.environ.get("LORA_BENCH_BASE", "tiny")
PROMPTS = ("a photo of a cat", "a lighthouse at dusk")
SEEDS, STEPS = 2, 4
ROUNDS = int(os.environ.get("LORA_BENCH_ROUNDS", "3"))  # one is enough on an SD1.5-sized base on a CPU
SIZE = None if BASE == "tiny" else 256  # the tiny base renders at its native 64 px


def harness_config(report_dir: Path, adapter: Path | None = None) -> HarnessConfig:
    return HarnessConfig(
        adapters=(AdapterSpec(adapter.name, adapter, slot="adapter_0"),) if adapter else (),
        base_model=BASE,
        base_path=resolve_base(BASE),
        render_size=SIZE,
        render_steps=STEPS,
        render_seeds=SEEDS,
        render_batch_size=16,
        prompts=PROMPTS,
        reference_steps=0,
        report_dir=report_dir,
        device="cpu",
        param_budget=ParamBudget(percent=2.0),
        diff_floor=0.5,
    )


def harness_setup(config: HarnessConfig):
    session = HarnessSession(config)
    session.prepare(["wiring", "pixel_diff"])
    return session, session.adapter(config.adapters[0])


def harness_renders(session, adapter) -> None:
    session.renders(None), session.renders(adapter), session.renders(adapter, 0.0), session.base_renders_again()


def plain_setup(config: HarnessConfig):
    pipeline = load_base(config).pipeline
    pipeline.load_lora_weights(str(config.adapters[0].path), adapter_name="a")
    return pipeline


def plain_renders(pipeline) -> None:
    render_states(pipeline, PROMPTS, SEEDS, STEPS, SIZE, guidance_scale=GUIDANCE_SCALE)
