"""The plain diffusers script a user would write for what the harness's four mechanical checks render: the base,
the adapted base, the adapter at scale 0 and the base again, every prompt x seed, no render cache.

    python benchmarks/plain_mechanical.py BASE ADAPTER SIZE STEPS SEEDS

BASE is a diffusers folder or `tiny` (the embedded base, built as the harness builds it); SIZE 0 = native.
"""

import sys

import torch

from lora_harness.config.config import DEFAULT_PROMPTS


def main(base: str, adapter: str, size: int, steps: int, seeds: int) -> None:
    if base == "tiny":
        from lora_harness.bases.tiny_base import build_tiny_pipeline

        pipeline = build_tiny_pipeline()
    else:
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(adapter, adapter_name="a")
    render_states(pipeline, DEFAULT_PROMPTS, seeds, steps, size or None)


def render_states(pipeline, prompts, seeds: int, steps: int, size: int | None, **call) -> None:
    """The four render states the mechanical checks need, each one batched call over every prompt x seed; `call`
    adds pipeline arguments (a guidance scale), else the pipeline's own defaults hold."""
    jobs = [(prompt, seed) for prompt in prompts for seed in range(seeds)]

    def render(scale: float):
        return pipeline(
            prompt=[p for p, _ in jobs],
            generator=[torch.Generator().manual_seed(s) for _, s in jobs],
            height=size,
            width=size,
            num_inference_steps=steps,
            cross_attention_kwargs={"scale": scale},
            output_type="np",
            **call,
        ).images

    pipeline.disable_lora()
    render(1.0)
    pipeline.enable_lora()
    render(1.0), render(0.0)
    pipeline.disable_lora()
    render(1.0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
