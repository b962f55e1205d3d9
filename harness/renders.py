"""The render plan and the renderer: same prompts, seeds, scheduler and size for the base and every adapter."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch


GUIDANCE_SCALE = 7.5  # diffusers' default for Stable Diffusion


@dataclass(frozen=True)
class RenderPlan:
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    size: int
    steps: int
    guidance_scale: float = GUIDANCE_SCALE

    @property
    def jobs(self) -> list[tuple[str, int]]:
        return [(prompt, seed) for prompt in self.prompts for seed in self.seeds]


@dataclass
class RenderSet:
    """One image per job of the plan, as uint8 HxWx3 (what a user would save and look at)."""

    images: np.ndarray  # [jobs, H, W, 3] uint8
    jobs: list[tuple[str, int]]
    nonfinite_jobs: list[tuple[str, int]] = field(default_factory=list)  # renders that produced NaN or Inf
    layers_run: set[str] = field(default_factory=set)  # LoRA layers whose forward ran during the render


class Renderer:
    def __init__(self, pipeline, plan: RenderPlan, device: str):
        self.pipeline = pipeline
        self.plan = plan
        self.device = device

    def render(self, adapter_name: str | None, scale: float = 1.0, watch: dict[str, torch.nn.Module] | None = None, plan: RenderPlan | None = None):
        """Render every job of `plan` (default: the main plan) with only `adapter_name` active (none: the base)."""
        plan = plan or self.plan
        ran: set[str] = set()
        hooks = [
            layer.lora_A[adapter_name].register_forward_hook(lambda *_, name=name: ran.add(name))
            for name, layer in (watch or {}).items()
        ]
        try:
            with self._only(adapter_name):
                output = self.pipeline(
                    prompt=[prompt for prompt, _ in plan.jobs],
                    generator=[torch.Generator(self.device).manual_seed(seed) for _, seed in plan.jobs],
                    height=plan.size,
                    width=plan.size,
                    num_inference_steps=plan.steps,
                    guidance_scale=plan.guidance_scale,
                    cross_attention_kwargs=None if adapter_name is None else {"scale": scale},
                    output_type="np",
                ).images
        finally:
            for hook in hooks:
                hook.remove()
        finite = np.isfinite(output).all(axis=(1, 2, 3))
        images = (np.nan_to_num(output, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)
        nonfinite = [job for job, ok in zip(plan.jobs, finite) if not ok]
        return RenderSet(images=images, jobs=plan.jobs, nonfinite_jobs=nonfinite, layers_run=ran)

    @contextlib.contextmanager
    def _only(self, adapter_name: str | None):
        loaded = _loaded_adapters(self.pipeline)
        if not loaded:
            yield
            return
        if adapter_name is None:
            self.pipeline.disable_lora()
            try:
                yield
            finally:
                self.pipeline.enable_lora()
            return
        self.pipeline.set_adapters([adapter_name])
        yield


def _loaded_adapters(pipeline) -> set[str]:
    names: set[str] = set()
    for adapters in pipeline.get_list_adapters().values():
        names.update(adapters)
    return names
