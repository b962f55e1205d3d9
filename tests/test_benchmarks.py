"""Speed, measured with pytest-benchmark as ratios against plain diffusers code in the same run; no timed asserts.

    pytest tests/test_benchmarks.py --benchmark-only --benchmark-columns=min,mean,rounds
"""

import subprocess
import sys

import pytest

from lora_harness.adapter_file import read_adapter
from lora_harness.injection import apply_adapter
from lora_harness.renders import RenderPlan, Renderer
from lora_harness.tiny_base import build_tiny_pipeline

PLAN = RenderPlan(prompts=("a photo of a cat", "a lighthouse"), seeds=(0, 1), size=64, steps=4)


@pytest.fixture
def pipeline():
    return build_tiny_pipeline()


def test_main_job(benchmark, tmp_path):
    """`pytest --adapter reference` end to end, in a fresh process as a user runs it."""
    command = [sys.executable, "-m", "pytest", "--adapter", "reference", "-p", "no:cacheprovider", "-q"]
    completed = benchmark.pedantic(
        subprocess.run, args=(command,), kwargs={"cwd": tmp_path, "capture_output": True}, rounds=1, iterations=1
    )
    assert completed.returncode == 0, completed.stdout.decode()[-2000:]


@pytest.mark.benchmark(group="load a Kohya adapter")
@pytest.mark.parametrize("loader", ["plain diffusers", "harness (with proof)"])
def test_load(benchmark, pipeline, write_lora, loader):
    path = write_lora("kohya", "k.safetensors")

    def load():
        if loader == "plain diffusers":
            pipeline.load_lora_weights(str(path), adapter_name="a")
        else:
            apply_adapter(pipeline, 32, read_adapter(path), "a")

    benchmark.pedantic(load, teardown=lambda: pipeline.unload_lora_weights(), rounds=5)


@pytest.mark.benchmark(group="render 4 images with an adapter")
@pytest.mark.parametrize("renderer", ["plain diffusers", "harness (hooks on every LoRA layer)"])
def test_render(benchmark, pipeline, write_lora, renderer):
    application = apply_adapter(pipeline, 32, read_adapter(write_lora("kohya", "k.safetensors")), "a")
    pipeline.set_progress_bar_config(disable=True)
    if renderer == "plain diffusers":
        import torch

        def render():
            return pipeline(
                prompt=[p for p, _ in PLAN.jobs],
                generator=[torch.Generator().manual_seed(s) for _, s in PLAN.jobs],
                height=PLAN.size,
                width=PLAN.size,
                num_inference_steps=PLAN.steps,
                output_type="np",
            ).images

    else:
        harness_renderer = Renderer(pipeline, PLAN, "cpu")

        def render():
            return harness_renderer.render("a", 1.0, application.lora_layers).images

    images = benchmark(render)
    assert images.shape[0] == len(PLAN.jobs)
