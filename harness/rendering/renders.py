"""The render settings and the renderer: same prompts, seeds, scheduler and size for the base and every adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lora_harness.bases.families import family_of_pipeline
from lora_harness.bases.families.family import GUIDANCE_SCALE
from lora_harness.loading.application import OnBase
from lora_harness.loading.peft_injection import peft_layers_off


@dataclass(frozen=True)
class RenderPlan:
    """The main prompts and the settings every render of the run shares."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    size: int
    steps: int
    guidance_scale: float | None = GUIDANCE_SCALE  # None: the pipeline guides as it does by default
    batch_size: int = 16  # renders per pipeline call
    frames: int = 1  # asked of a video pipeline; it may round the count to one it can make

    def jobs_for(self, prompts) -> list[tuple[str, int]]:
        return [(prompt, seed) for prompt in prompts for seed in self.seeds]

    @property
    def jobs(self) -> list[tuple[str, int]]:
        return self.jobs_for(self.prompts)


@dataclass
class RenderSet:
    """One image per job, as uint8 HxWx3 (what a user would save and look at). A video's frames sit side by side
    in one strip: every pixel comparison covers every frame, and the report shows the strip."""

    images: np.ndarray  # [jobs, H, W, 3] uint8; a video's: [jobs, H, frames x W, 3]
    jobs: list[tuple[str, int]]
    nonfinite_jobs: list[tuple[str, int]] = field(default_factory=list)  # renders that produced NaN or Inf
    layers_run: set[str] = field(default_factory=set)  # LoRA layers whose forward ran during the render
    frames: int = 1  # frames per render, side by side

    def features(self, encode, unit: bool = False) -> torch.Tensor:
        """`encode`'s features (uint8 [N, H, W, 3] -> [N, D]) per job: a video's is the mean of its frames', each
        frame encoded as an image (`unit`: renormalized, for cosine similarities)."""
        if self.frames == 1:
            return encode(self.images)
        jobs, height, strip, _ = self.images.shape
        width = strip // self.frames
        frames = self.images.reshape(jobs, height, self.frames, width, 3).transpose(0, 2, 1, 3, 4)
        features = encode(np.ascontiguousarray(frames.reshape(-1, height, width, 3)))
        mean = features.reshape(jobs, self.frames, -1).mean(dim=1)
        return torch.nn.functional.normalize(mean, dim=-1) if unit else mean


class Renderer:
    def __init__(self, pipeline, plan: RenderPlan, device: str):
        self.pipeline = pipeline
        self.plan = plan
        self.device = device
        # The keyword the family's pipeline carries the LoRA scale in (U-Nets `cross_attention_kwargs`, MMDiTs `joint_…`).
        rendering = family_of_pipeline(pipeline).rendering
        self.scale_argument = rendering.scale_keyword
        self.call_arguments = dict(rendering.call_arguments)
        self.video = rendering.video
        if self.video:
            self.call_arguments["num_frames"] = plan.frames
        self.adapters: dict[str, OnBase] = {}  # adapter name -> how its kind switches it on (Application.on_base)

    def render(
        self,
        adapter_name: str | None,
        scale: float = 1.0,
        jobs: list[tuple[str, int]] | None = None,
        watch: dict[str, torch.nn.Module] | None = None,
        on_step: Callable[[], None] = lambda: None,
    ) -> RenderSet:
        """Render `jobs` (default: the main plan's) with only `adapter_name` active (none: the base), in pipeline
        calls of at most `plan.batch_size` prompts; `watch`ed LoRA layers record whether their forward ran."""
        jobs = self.plan.jobs if jobs is None else jobs
        ran: set[str] = set()
        on_base = self.adapters.get(adapter_name)
        hooks = [on_base.watch(name, layer, lambda name=name: ran.add(name)) for name, layer in (watch or {}).items()]
        try:
            with self._only(adapter_name, scale):
                batch = self.plan.batch_size
                output = np.concatenate(
                    [self._call(jobs[i : i + batch], adapter_name, scale, on_step) for i in range(0, len(jobs), batch)]
                )
        finally:
            for hook in hooks:
                hook.remove()
        finite = np.isfinite(output).all(axis=(1, 2, 3))
        images = (np.nan_to_num(output, nan=0.0).clip(0, 1) * 255).round().astype(np.uint8)
        nonfinite = [job for job, ok in zip(jobs, finite) if not ok]
        frames = images.shape[2] // images.shape[1] if self.video else 1  # the renderer's frames are square
        return RenderSet(images=images, jobs=list(jobs), nonfinite_jobs=nonfinite, layers_run=ran, frames=frames)

    def _call(self, jobs, adapter_name, scale, on_step) -> np.ndarray:
        plan = self.plan

        def step_end(pipeline, step, timestep, tensors):
            on_step()
            return tensors

        output = self.pipeline(
            prompt=[prompt for prompt, _ in jobs],
            generator=[torch.Generator(self.device).manual_seed(seed) for _, seed in jobs],
            height=plan.size,
            width=plan.size,
            num_inference_steps=plan.steps,
            guidance_scale=plan.guidance_scale,
            callback_on_step_end=step_end,
            output_type="np",
            **self.call_arguments,
            **{self.scale_argument: {"scale": scale} if self._scale_in_call(adapter_name) else None},
        )
        if not self.video:
            return output.images
        videos = np.asarray(output.frames, dtype=np.float32)  # [jobs, frames, H, W, 3] -> [jobs, H, frames x W, 3]
        jobs_count, frames, height, width, _ = videos.shape
        return videos.transpose(0, 2, 1, 3, 4).reshape(jobs_count, height, frames * width, 3)

    def _scale_in_call(self, adapter_name: str | None) -> bool:
        return adapter_name is not None and self.adapters[adapter_name].scale_in_call

    def _only(self, adapter_name: str | None, scale: float):
        """Only `adapter_name` on the base, at `scale` (none: the base as it is)."""
        if adapter_name is None:
            return peft_layers_off(self.pipeline)
        return self.adapters[adapter_name].active(scale)
