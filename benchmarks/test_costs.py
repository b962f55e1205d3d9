"""What the harness costs next to the plain diffusers script a user would write, with pytest-benchmark.

Not part of the test run (its own command; results saved so runs compare):

    pytest benchmarks --benchmark-autosave
    pytest benchmarks --benchmark-compare                   # against the last saved run
    LORA_BENCH_BASE=./sd15-random LORA_BENCH_ROUNDS=1 pytest benchmarks -k "render_phase or peak"   # SD1.5-sized

Each figure is a ratio measured in the same process (or, for memory, in twin processes): no timed asserts.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from render_phase import (
    BASE,
    ROUNDS,
    harness_config,
    harness_renders,
    harness_setup,
    plain_renders,
    plain_setup,
)

from lora_harness.bases.base import load_base
from lora_harness.fixtures.adapter_writers import make_lora, write_adapter
from lora_harness.loading.adapter_file import read_adapter
from lora_harness.loading.kinds import apply_adapter


@pytest.fixture(scope="module")
def kohya_adapter(tmp_path_factory):
    """A rank-4 Kohya file matching the benchmark base's U-Net."""
    folder = tmp_path_factory.mktemp("adapters")
    unet = load_base(harness_config(folder)).pipeline.unet
    return write_adapter("kohya", make_lora(unet, rank=4, seed=1), folder / "kohya.safetensors", 4, 4)


@pytest.mark.benchmark(group="render phase: base, adapted, scale 0, base again")
@pytest.mark.parametrize("renderer", ["plain diffusers", "harness"])
def test_render_phase(benchmark, renderer, kohya_adapter, tmp_path):
    """The renders wiring and pixel_diff need: the harness (LoRA hooks, bookkeeping) against bare pipeline calls."""
    config = harness_config(tmp_path, kohya_adapter)
    if renderer == "harness":
        benchmark.pedantic(harness_renders, setup=lambda: (harness_setup(config), {}), rounds=ROUNDS)
    else:
        benchmark.pedantic(plain_renders, setup=lambda: ((plain_setup(config),), {}), rounds=ROUNDS)


@pytest.mark.benchmark(group="load a Kohya adapter")
@pytest.mark.parametrize("loader", ["plain diffusers", "harness (with proof)"])
def test_load(benchmark, loader, kohya_adapter, tmp_path):
    """diffusers' load_lora_weights against the harness's load, which also proves every value and scale."""
    base = load_base(harness_config(tmp_path))

    def load():
        if loader == "plain diffusers":
            base.pipeline.load_lora_weights(str(kohya_adapter), adapter_name="a")
        else:
            apply_adapter(base.pipeline, base.signature, read_adapter(kohya_adapter), "a")

    benchmark.pedantic(load, teardown=base.pipeline.unload_lora_weights, rounds=5)


@pytest.fixture(scope="module")
def flux_width_adapter(tmp_path_factory):
    """A Flux pipeline at Flux.1's widths (one single-stream block) and a rank-16 Kohya file for it, CLIP included."""
    from lora_harness.fixtures.adapter_writers import write_flux_community
    from lora_harness.fixtures.family_bases import flux_width_pipeline

    pipeline = flux_width_pipeline()
    path = tmp_path_factory.mktemp("flux") / "kohya-flux.safetensors"
    return pipeline, write_flux_community(pipeline, path, "kohya", rank=16, alpha=8.0, text_encoder=True)


@pytest.mark.benchmark(group="load a Kohya Flux adapter (Flux.1 widths, one single-stream block)")
@pytest.mark.parametrize("loader", ["plain diffusers", "harness (with proof)"])
def test_load_flux_layout(benchmark, loader, flux_width_adapter):
    """diffusers converts the fused modules; the harness converts the same way and proves each module's update."""
    from lora_harness.bases.families import pipeline_signature

    pipeline, path = flux_width_adapter

    def load():
        if loader == "plain diffusers":
            pipeline.load_lora_weights(str(path), adapter_name="a")
        else:
            apply_adapter(pipeline, pipeline_signature(pipeline), read_adapter(path), "a")

    benchmark.pedantic(load, teardown=pipeline.unload_lora_weights, rounds=5)


def run_harness(folder: Path, *arguments: str) -> dict:
    """`pytest --adapter …` in a fresh process as a user runs it; returns results.json."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--base-model", BASE, *arguments]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    assert completed.returncode in (0, 1), completed.stdout[-3000:]
    return json.loads((folder / "lora-report" / "results.json").read_text())


def test_main_job(benchmark, tmp_path):
    """`pytest --adapter reference` end to end, render cache off (the first run on a machine)."""
    benchmark.pedantic(
        run_harness, args=(tmp_path, "--adapter", "reference", "--no-render-cache"), rounds=1, iterations=1
    )


def test_second_adapter_cost(benchmark, kohya_adapter, tmp_path):
    """Two adapters in one run: the second shares the base renders; its share of wall time and U-Net calls.
    Without the reference overfit, whose training and controls would fall to the first adapter."""
    other = write_adapter(
        "peft", make_lora(load_base(harness_config(tmp_path)).pipeline.unet, seed=2), tmp_path / "peft", 4, 4
    )
    arguments = (
        "--adapter",
        str(kohya_adapter),
        "--adapter",
        str(other),
        "--reference-steps",
        "0",
        "--no-render-cache",
    )
    document = benchmark.pedantic(run_harness, args=(tmp_path, *arguments), rounds=1, iterations=1)
    first, second = (adapter["cost"] for adapter in document["adapters"])
    benchmark.extra_info.update(
        first=first,
        second=second,
        wall_ratio=round(second["wall_s"] / first["wall_s"], 3),
        unet_ratio=round(second["unet_forward_passes"] / first["unet_forward_passes"], 3),
    )
    print(
        f"\nsecond adapter / first: wall {benchmark.extra_info['wall_ratio']}, U-Net calls {benchmark.extra_info['unet_ratio']}"
    )


def test_warm_render_cache(benchmark, kohya_adapter, tmp_path):
    """The same adapter again: renders come from the cache; only the determinism control renders."""
    arguments = ("--adapter", str(kohya_adapter), "--render-cache", str(tmp_path / "cache"))
    cold = run_harness(tmp_path, *arguments)
    warm = benchmark.pedantic(run_harness, args=(tmp_path, *arguments), rounds=1, iterations=1)
    benchmark.extra_info.update(cold_unet=cold["unet_forward_passes"], warm_unet=warm["unet_forward_passes"])


PEAK_MEMORY_SCRIPT = Path(__file__).with_name("peak_memory.py")


def test_peak_memory(benchmark, kohya_adapter):
    """Peak resident memory of the render phase over what loading took, harness vs plain, in twin processes."""

    def measure() -> dict:
        peaks = {}
        for renderer in ("plain", "harness"):
            command = [sys.executable, str(PEAK_MEMORY_SCRIPT), renderer, str(kohya_adapter)]
            peaks[renderer] = json.loads(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
        return peaks

    peaks = benchmark.pedantic(measure, rounds=1, iterations=1)
    ratio = peaks["harness"]["peak_mib"] / peaks["plain"]["peak_mib"]
    growth = peaks["harness"]["growth_mib"] / max(peaks["plain"]["growth_mib"], 1)
    benchmark.extra_info.update(peaks=peaks, peak_ratio=round(ratio, 3), growth_ratio=round(growth, 3))
    print(
        f"\npeak memory while rendering, harness / plain: {ratio:.3f}; growth over the loaded state: {growth:.3f} ({peaks})"
    )


PLAIN_SCRIPT = Path(__file__).with_name("plain_mechanical.py")
MECHANICAL = "wiring or frozen_base or param_budget or pixel_diff"


# A user's environment holds the harness and its declared dependencies (`pip install lora-harness`), not this
# repository's test extra, whose pytest plugins (hypothesis, xdist, pytest-html, anyio) would load into every run
# here: hypothesis alone added 1.8 s to a 23 s SD1.5 run (its import and its terminal summary).
AS_A_USER = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
USER_PLUGINS = ("-p", "lora_harness.plugin", "-p", "pytest_benchmark.plugin")  # the entry points it installs


def whole_process(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak resident MiB, CPU seconds) of one child process, from its own rusage. CPU time is the
    steadier figure on a shared machine: time the host gives to others counts in the wall time only."""
    started = time.perf_counter()
    with log.open("w") as output:
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=environment)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, log.read_text()[-3000:]
    return time.perf_counter() - started, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def test_mechanical_checks_against_the_plain_script(benchmark, kohya_adapter, tmp_path):
    """The harness's four mechanical checks on one adapter, as a user runs them (`pytest --adapter …`, no render
    cache, the plugins a user's installation has), against the plain script making the same renders, as whole
    processes, alternating in one sitting.
    LORA_BENCH_SIZE (0: native) and LORA_BENCH_STEPS set the renders, LORA_BENCH_PAIRS the number of pairs."""
    size, steps = os.environ.get("LORA_BENCH_SIZE", "0"), os.environ.get("LORA_BENCH_STEPS", "4")
    pairs = int(os.environ.get("LORA_BENCH_PAIRS", "3"))
    render = ["--render-steps", steps, "--render-seeds", "2", *(["--render-size", size] if size != "0" else [])]
    harness = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *USER_PLUGINS,
        "--adapter",
        str(kohya_adapter),
        "--base-model",
        BASE,
        "--reference-steps",
        "0",
        "--no-render-cache",
        *render,
        "-k",
        MECHANICAL,
    ]
    plain = [sys.executable, str(PLAIN_SCRIPT), BASE, str(kohya_adapter), size, steps, "2"]

    def alternate() -> dict:
        figures = {"harness": [], "plain": []}
        for pair in range(pairs):
            for name, command, env in (("plain", plain, None), ("harness", harness, AS_A_USER)):
                figures[name].append(whole_process(command, tmp_path, tmp_path / f"{name}-{pair}.log", env))
        return figures

    figures = benchmark.pedantic(alternate, rounds=1, iterations=1)
    median = {name: [statistics.median(run[i] for run in runs) for i in (0, 1, 2)] for name, runs in figures.items()}
    # Each pair's own ratio: the machine's speed drifts between pairs (here by 10% in minutes), less within one.
    paired = [[h[i] / p[i] for h, p in zip(figures["harness"], figures["plain"])] for i in (0, 1, 2)]
    ratios = dict(zip(("wall", "peak_memory", "cpu"), (statistics.median(each) for each in paired)))
    benchmark.extra_info.update(figures=figures, ratios=ratios, paired=paired)
    print(
        f"\nharness / plain over {pairs} pairs (median of each pair's ratio): wall {ratios['wall']:.2f}x "
        f"({', '.join(f'{r:.2f}' for r in paired[0])}; medians {median['harness'][0]:.1f} s vs "
        f"{median['plain'][0]:.1f} s), CPU {ratios['cpu']:.2f}x ({median['harness'][2]:.1f} s vs "
        f"{median['plain'][2]:.1f} s), peak memory {ratios['peak_memory']:.2f}x "
        f"({median['harness'][1]:.0f} vs {median['plain'][1]:.0f} MiB)"
    )
