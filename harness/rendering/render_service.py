"""The renders every check reads: planned per render state, kept in memory, read from and written to the disk
cache, made by the pipeline (or a `pytest_lora_render` hook) only when neither holds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lora_harness.config.check_registry import ADAPTED, AT_ZERO, BASE
from lora_harness.rendering.progress import Progress
from lora_harness.rendering.render_cache import CachedRender, RenderCache, RenderKey
from lora_harness.rendering.render_needs import RenderNeeds
from lora_harness.rendering.renders import Renderer, RenderPlan, RenderSet


@dataclass(frozen=True)
class RenderTarget:
    """What is rendered: the base (slot None) or the adapter in `slot`, and what identifies its pixels."""

    slot: str | None
    name: str = "base"  # for progress lines
    role: str = "adapter"  # adapter | reference | control: which renders the plan gives it
    identity: str | None = None  # the adapter file's digest, for the disk cache
    layers: dict | None = None  # the LoRA layers whose forward is recorded at scale 1


class RenderService:
    def __init__(
        self,
        plan: RenderPlan,
        needs: RenderNeeds,
        prompt_sets: dict[str, tuple[str, ...]],
        renderer: Renderer,
        render_hook: Callable[..., RenderSet | None],
        identity: dict,
        cache: RenderCache | None,
        progress: Progress,
    ):
        self.plan = plan
        self.needs = needs
        self.prompt_sets = prompt_sets  # prompt set name -> its prompts
        self.renderer = renderer
        self.render_hook = render_hook  # pytest_lora_render, bound to the session
        self.identity = identity  # the cache key's parts every render of the run shares
        self.cache = cache
        self.progress = progress
        self._images: dict[tuple, CachedRender] = {}  # (slot, scale, prompt, seed) -> one render
        self._base_again: RenderSet | None = None

    def renders(self, target: RenderTarget, scale: float, prompts: tuple[str, ...]) -> RenderSet:
        """Renders of `prompts` x the seeds. A state's first request renders every prompt any selected check wants
        of it, in one go."""
        jobs = self.plan.jobs_for(prompts)
        if any((target.slot, scale, *job) not in self._images for job in jobs):
            planned = [p for name in self._planned_prompt_sets(target, scale) for p in self.prompt_sets[name]]
            self._fill(target, scale, self.plan.jobs_for(dict.fromkeys([*planned, *prompts])))
        return _render_set([self._images[(target.slot, scale, *job)] for job in jobs], jobs, self.renderer.video)

    def base_again(self) -> RenderSet:
        """The determinism control: the base rendered a second time with the same inputs, never from a cache."""
        if self._base_again is None:
            self.renders(RenderTarget(None), 1.0, self.plan.prompts)
            what = "the base again (determinism control)"
            self._base_again = self.render(what, None, 1.0, self.plan.jobs)
        return self._base_again

    def forget(self, slot: str) -> None:
        """An unloaded adapter's renders leave memory (the disk cache keeps them)."""
        self._images = {key: value for key, value in self._images.items() if key[0] != slot}

    def _planned_prompt_sets(self, target: RenderTarget, scale: float) -> list[str]:
        if target.slot is None:
            return self.needs.prompt_sets(BASE)
        return self.needs.prompt_sets(ADAPTED if scale == 1.0 else AT_ZERO, target.role)

    def _fill(self, target: RenderTarget, scale: float, jobs: list[tuple[str, int]]) -> None:
        slot = target.slot
        missing = [job for job in jobs if (slot, scale, *job) not in self._images]
        cache = self.cache
        keys = {job: self._cache_key(target, scale, *job) for job in missing} if cache else {}
        for job, key in keys.items():
            cached = cache.get(key)
            if cached is not None:
                self._images[(slot, scale, *job)] = cached
        to_render = [job for job in missing if (slot, scale, *job) not in self._images]
        what = f"adapter {target.name} at scale {scale:g}" if slot else "base"
        if len(to_render) < len(missing):
            self.progress.line(f"{what}: {len(missing) - len(to_render)} renders from the cache {cache.folder}")
        if to_render:
            rendered = self.render(what, slot, scale, to_render, target.layers if scale == 1.0 else None)
            for index, job in enumerate(to_render):
                render = CachedRender(
                    rendered.images[index], job not in rendered.nonfinite_jobs, sorted(rendered.layers_run)
                )
                self._images[(slot, scale, *job)] = render
                if cache:
                    cache.put(keys[job], render)

    def render(self, what: str, slot: str | None, scale: float, jobs, watch=None) -> RenderSet:
        """`jobs` rendered now, by a `pytest_lora_render` hook or the pipeline, with a progress bar."""
        plan = self.plan
        renders = f"{len(jobs)} videos of {plan.frames} frames" if plan.frames > 1 else f"{len(jobs)} images"
        self.progress.line(f"rendering {what}: {renders}, {plan.steps} steps, {plan.size}px")
        calls = -(-len(jobs) // plan.batch_size)
        with self.progress.bar(calls * plan.steps, f"rendering {what}") as advance:
            supplied = self.render_hook(slot=slot, scale=scale, jobs=jobs, watch=watch, on_step=advance)
            return supplied if supplied is not None else self.renderer.render(slot, scale, jobs, watch, advance)

    def _cache_key(self, target: RenderTarget, scale: float, prompt: str, seed: int) -> RenderKey:
        return RenderKey(adapter_sha256=target.identity, scale=scale, prompt=prompt, seed=seed, **self.identity)


def _render_set(renders: list[CachedRender], jobs, video: bool) -> RenderSet:
    images = np.stack([render.image for render in renders])
    return RenderSet(
        images=images,
        jobs=jobs,
        nonfinite_jobs=[job for job, render in zip(jobs, renders) if not render.finite],
        layers_run={layer for render in renders for layer in render.layers_run},
        frames=images.shape[2] // images.shape[1] if video else 1,  # a video's square frames, side by side
    )
