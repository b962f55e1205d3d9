"""HarnessSession: the run's state, kept in `config.stash`. Loads the base once, adapters one at a time,
caches renders, and owns the controls that decide whether any verdict can be trusted."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from lora_harness.bases.digests import BaseWatch, Evidence, base_parameters, fingerprint
from lora_harness.bases.families import denoiser_of
from lora_harness.config.check_registry import (
    ADAPTED,
    AT_ZERO,
    BASE,
    BASE_AGAIN,
    BUILTIN,
    CLIP,
    HELDOUT,
    INCEPTION,
    MAIN,
    CheckRegistry,
)
from lora_harness.config.config import REFERENCE, TINY, AdapterSpec, HarnessConfig
from lora_harness.config.hookspecs import standalone_hooks
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.injection import Application, apply_adapter, file_defects, remove_adapter
from lora_harness.rendering.progress import Progress
from lora_harness.rendering.render_cache import CachedRender, RenderCache, RenderKey, scheduler_identity
from lora_harness.rendering.render_needs import RenderNeeds
from lora_harness.rendering.renders import Renderer, RenderPlan, RenderSet
from lora_harness.run.regression import compare
from lora_harness.verdicts.pixel_diff import evaluate_pixel_diff
from lora_harness.verdicts.results import ERROR, FAILED, PASSED, SKIPPED, CheckResult
from lora_harness.verdicts.wiring import evaluate_wiring

CONTROL = AdapterSpec("control-untrained", None, slot="control_untrained")
REFERENCE_SKIPPED = "--reference-steps 0: the reference overfit and its controls were not run"


@dataclass
class LoadedAdapter:
    spec: AdapterSpec
    record: dict  # the adapter's entry in results.json
    application: Application | None = None
    problem: str | None = None  # why it could not be applied: every check fails with it
    skipped: str | None = None
    defects: list[str] = field(default_factory=list)  # what is wrong with the file: fails every check
    stages: dict[str, Evidence] = field(default_factory=dict)  # what frozen_base found at each stage

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Controls:
    status: str  # passed | failed | skipped
    message: str
    details: dict = field(default_factory=dict)


class HarnessSession:
    def __init__(
        self,
        config: HarnessConfig,
        progress: Progress | None = None,
        previous=None,
        registry: CheckRegistry = BUILTIN,
        hook=None,
    ):
        self.config = config
        self.registry = registry  # what each check needs and how it is judged
        self.hook = hook if hook is not None else standalone_hooks()  # config.hook: the plugins' pytest_lora_* hooks
        self.previous = previous  # regression.Previous, with --compare-to
        self.progress = progress or Progress()  # silent outside pytest
        self.render_cache = RenderCache(config.render_cache) if config.render_cache else None
        self.checks: list[str] | None = None  # the checks collected; None: all of them
        self.unet_forward_passes = 0  # the denoiser's (U-Net or transformer); results.json names it so
        self._loaded: dict[str, LoadedAdapter] = {}
        self._images: dict[tuple, CachedRender] = {}  # (slot, scale, prompt, seed) -> one render
        self._base_again: RenderSet | None = None
        self._reported = {"unet_forward_passes": 0, "cache_hits": 0, "cache_written": 0}
        self.after_training: Evidence | None = None  # the full digest after the reference's training

    # -- base -------------------------------------------------------------------------------------------------
    @cached_property
    def base(self):
        from lora_harness.bases.base import load_base

        self.progress.line(
            f"loading base model {self.config.base_model}, {self.config.dtype} ({self.config.dtype_choice})"
        )
        base = load_base(self.config)
        denoiser_of(base.pipeline).register_forward_pre_hook(self._count_forward)
        self.watch = BaseWatch(base.pipeline)  # the session's first digests, every adapter is held to
        self.base_fingerprint = fingerprint(self.watch.digests)
        return base

    def _count_forward(self, *_):
        self.unet_forward_passes += 1

    def take_costs(self) -> dict[str, int]:
        """U-Net calls and cache traffic since the last call: each test report carries its share, so xdist adds them up."""
        cache = self.render_cache
        now = {
            "unet_forward_passes": self.unet_forward_passes,
            "cache_hits": cache.hits if cache else 0,
            "cache_written": cache.written if cache else 0,
        }
        delta = {key: now[key] - self._reported[key] for key in now}
        self._reported = now
        return delta

    def base_summary(self) -> dict:
        return self.base.summary(self.base_fingerprint)

    @cached_property
    def plan(self) -> RenderPlan:
        seeds = tuple(range(self.config.render_seeds))
        size = self.config.render_size or self.base.native_size
        return RenderPlan(
            self.config.prompts,
            seeds,
            size,
            self.config.render_steps,
            self.base.guidance_scale,
            self.config.render_batch_size,
        )

    @cached_property
    def needs(self) -> RenderNeeds:
        specs = [self.registry[name] for name in (self.checks if self.checks is not None else self.registry.names)]
        features = {INCEPTION} if self.config.inception_weights is not None else set()
        if any(CLIP in spec.features for spec in specs) and self.clip[0] is not None:  # CLIP loads only if a check asks
            features.add(CLIP)
        return RenderNeeds.of_checks(
            specs,
            features=features,
            corpus=self.config.reference_images is not None,
            train_images=self.config.train_images is not None,
            reference_steps=self.config.reference_steps,
        )

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.base.pipeline, self.plan, self.config.device)

    # -- reference overfit --------------------------------------------------------------------------------------
    @cached_property
    def reference_run(self):
        """Trained once, before any adapter is loaded, so the base it leaves is the one every adapter sees."""
        if self.config.reference_steps == 0:
            return None
        from lora_harness.run.reference import train_reference

        pipeline = self.base.pipeline
        steps = self.config.reference_steps
        self.progress.line(f"training the reference overfit: {steps} steps")
        with self.progress.bar(steps, "reference overfit") as advance:
            run = train_reference(
                pipeline, steps, self.plan.size, self.config.device, self.config.report_dir, lambda *_: advance()
            )
        self.progress.line(f"reference overfit: loss {run.losses[0]:.4f} -> {run.losses[-1]:.4f}")
        self.after_training = self.watch.full()
        if self.after_training.changed:
            self._restore(self.after_training.changed, "the reference's training")
        return run

    # -- adapters -------------------------------------------------------------------------------------------------
    def adapter(self, spec: AdapterSpec) -> LoadedAdapter:
        if spec.name not in self._loaded:
            try:
                self._loaded[spec.name] = self._load(spec)
            except Exception:
                if "base" in self.__dict__:  # what a crash half-way through injection wrote is put back
                    self._settle(f"{spec.name}, whose loading raised", self.watch.cheap(set()))
                raise
        return self._loaded[spec.name]

    def _load(self, spec: AdapterSpec) -> LoadedAdapter:
        path = spec.path
        if path is None:  # the reference or its negative control
            run = self.reference_run
            if run is None:
                return LoadedAdapter(spec, {"name": spec.name, "path": None}, skipped=REFERENCE_SKIPPED)
            path = run.reference_dir if spec.name == REFERENCE else run.control_dir
        record = {"name": spec.name, "path": str(path)}
        if self.needs.controls or any(s.is_reference for s in self.config.checked_adapters):
            self.reference_run  # noqa: B018 - training must happen before the first adapter touches the base
        if not spec.is_reference:
            self._render_baselines()
        self.progress.line(f"loading adapter {spec.name}")
        try:
            adapter_file = read_adapter(path)
            record.update(sha256=adapter_file.sha256, metadata=_metadata(adapter_file))
            application = apply_adapter(self.base.pipeline, self.base.signature, adapter_file, spec.slot)
        except AdapterLoadError as error:
            record.update(error=str(error))
            return LoadedAdapter(spec, record, problem=str(error))
        record.update(application.record())
        if application.network is not None:  # LyCORIS applies it, only while it renders
            self.renderer.lycoris[spec.slot] = application.network
        if application.replaced is not None:  # so are the modules its `modules_to_save` replaces
            self.renderer.replaced[spec.slot] = application.replaced
        defects = file_defects(adapter_file.weights_path, application)
        if defects:
            record["defects"] = defects
        loaded = LoadedAdapter(spec, record, application=application, defects=defects)
        try:
            self.hook.pytest_lora_adapter_loaded(harness=self, adapter=loaded)
        except BaseException:
            self._take_out(spec.slot)  # no layer of it stays for the next adapter
            raise
        return loaded

    def _render_baselines(self) -> None:
        """What every adapter is compared with (the base's renders, the determinism control, the controls) is made
        before the first adapter loads, on the base as first digested: one that changes the base changes no other's
        verdict, in memory or in the render cache. The controls only where a check is gated on them (run_check).
        A render that raises here is left to the checks that need it, which record the error as theirs."""
        gated = {spec.name for spec in self.registry if spec.gated_by_controls}
        try:
            if self.needs.prompt_sets(BASE):
                self.renders(None)
            if self.needs.prompt_sets(BASE_AGAIN):
                self.base_renders_again()
            if self.needs.controls and gated & set(self.checks if self.checks is not None else self.registry.names):
                self.controls  # noqa: B018
        except Exception:  # noqa: BLE001 - raised again, in its own check's record, when that check renders
            pass

    def record_stage(self, adapter: LoadedAdapter, stage: str) -> Evidence:
        """The base against the session's first digests, for frozen_base: digests of the parameters of the modules
        the adapter targets and of any parameter whose version counter or storage moved (harness/bases/digests.py)."""
        modules = set(adapter.application.lora_layers) if adapter.application else set()
        adapter.stages[stage] = self.watch.cheap(modules)
        return adapter.stages[stage]

    def _settle(self, who: str, evidence: Evidence) -> None:
        """Isolation: a base that differs from the first digests is restored before the next adapter loads."""
        if evidence.changed:
            self._restore(evidence.changed, who)

    def _restore(self, names: list[str], who: str) -> None:
        """Reload the base (on the CPU, only while its parameters are copied back) and put back what `who` changed.
        Cheaper than a kept copy of the base, which would double its memory for a case that should never happen."""
        from lora_harness.bases.base import load_base

        self.progress.line(f"{who} changed {len(names)} base parameters: restoring them from {self.config.base_model}")
        fresh = load_base(replace(self.config, device="cpu")).pipeline
        left = self.watch.restore(names, base_parameters(fresh))
        if left:
            raise RuntimeError(
                f"{who} changed {len(names)} base parameters and {len(left)} could not be restored from "
                f"{self.config.base_model}, first {left[0]}: a module was replaced or removed, or the base on disk "
                "changed during the run; the adapters after it would be checked on another base: run it alone"
            )

    def close(self) -> None:
        """The session's last full digest: a change written around the cheap evidence (through `.data` or a shared
        buffer) still ends the run named. Raises naming what changed."""
        if "base" not in self.__dict__:
            return
        names = self.watch.full().changed
        if names:
            raise RuntimeError(
                f"{len(names)} base parameters differ from the session's first digests at its end, first "
                f"{', '.join(names[:3])}: written without moving their version counter or storage (through `.data` "
                "or a shared buffer), so no adapter's frozen_base saw it and the verdicts after it ran on another "
                "base; run each adapter alone (-k ADAPTER) to find the one that writes them"
            )

    def unload(self, spec: AdapterSpec) -> None:
        loaded = self._loaded.pop(spec.name, None)
        if loaded is None:
            return
        if loaded.application is None:  # refused or skipped: nothing to take out, but it may have run on the base
            if "base" in self.__dict__:
                self._settle(spec.name, self.record_stage(loaded, "after unloading"))
            return
        self._take_out(spec.slot)
        self._images = {key: value for key, value in self._images.items() if key[0] != spec.slot}
        self._settle(spec.name, self.record_stage(loaded, "after unloading"))

    def _take_out(self, slot: str) -> None:
        """The adapter in `slot` off the base: peft's layers removed, LyCORIS's and replaced modules let go."""
        self.renderer.replaced.pop(slot, None)
        if self.renderer.lycoris.pop(slot, None) is None:
            remove_adapter(self.base.pipeline, slot)

    # -- renders ----------------------------------------------------------------------------------------------------
    def renders(self, adapter: LoadedAdapter | None, scale: float = 1.0, prompts=None) -> RenderSet:
        """Renders of `prompts` (default: the main ones) x the seeds, from memory, the disk cache or the pipeline.
        A state's first render request renders every prompt any selected check wants of it, in one go."""
        prompts = self.plan.prompts if prompts is None else tuple(prompts)
        slot, scale = (adapter.spec.slot, scale) if adapter else (None, 1.0)
        jobs = self.plan.jobs_for(prompts)
        if any((slot, scale, *job) not in self._images for job in jobs):
            planned = [p for name in self._planned_prompt_sets(adapter, scale) for p in self._prompt_set(name)]
            self._fill(adapter, scale, self.plan.jobs_for(dict.fromkeys([*planned, *prompts])))
        return self._render_set([self._images[(slot, scale, *job)] for job in jobs], jobs)

    def _prompt_set(self, name: str) -> tuple[str, ...]:
        return {MAIN: self.plan.prompts, HELDOUT: self.config.heldout_prompts}[name]

    def _planned_prompt_sets(self, adapter: LoadedAdapter | None, scale: float) -> list[str]:
        if adapter is None:
            return self.needs.prompt_sets(BASE)
        role = "control" if adapter.spec == CONTROL else "reference" if adapter.spec.is_reference else "adapter"
        return self.needs.prompt_sets(ADAPTED if scale == 1.0 else AT_ZERO, role)

    def _fill(self, adapter: LoadedAdapter | None, scale: float, jobs: list[tuple[str, int]]) -> None:
        slot = adapter.spec.slot if adapter else None
        if adapter is None:
            self.reference_run  # noqa: B018 - the base is rendered as the adapters will see it
        missing = [job for job in jobs if (slot, scale, *job) not in self._images]
        cache = self.render_cache
        keys = {job: self._cache_key(adapter, scale, *job) for job in missing} if cache else {}
        for job, key in keys.items():
            cached = cache.get(key)
            if cached is not None:
                self._images[(slot, scale, *job)] = cached
        to_render = [job for job in missing if (slot, scale, *job) not in self._images]
        what = f"adapter {adapter.name} at scale {scale:g}" if adapter else "base"
        if len(to_render) < len(missing):
            self.progress.line(f"{what}: {len(missing) - len(to_render)} renders from the cache {cache.folder}")
        if to_render:
            watch = adapter.application.lora_layers if adapter and scale == 1.0 else None
            rendered = self._render(what, slot, scale, to_render, watch)
            for index, job in enumerate(to_render):
                render = CachedRender(
                    rendered.images[index], job not in rendered.nonfinite_jobs, sorted(rendered.layers_run)
                )
                self._images[(slot, scale, *job)] = render
                if cache:
                    cache.put(keys[job], render)

    def _render(self, what: str, slot: str | None, scale: float, jobs, watch=None) -> RenderSet:
        plan = self.plan
        self.progress.line(f"rendering {what}: {len(jobs)} images, {plan.steps} steps, {plan.size}px")
        calls = -(-len(jobs) // plan.batch_size)
        with self.progress.bar(calls * plan.steps, f"rendering {what}") as advance:
            supplied = self.hook.pytest_lora_render(
                harness=self, slot=slot, scale=scale, jobs=jobs, watch=watch, on_step=advance
            )
            return supplied if supplied is not None else self.renderer.render(slot, scale, jobs, watch, advance)

    def _cache_key(self, adapter: LoadedAdapter | None, scale: float, prompt: str, seed: int) -> RenderKey:
        identity = None
        if adapter is not None:  # a PEFT folder's adapter_config.json (alpha, targets) decides pixels too
            config = adapter.record.get("metadata", {}).get("adapter_config")
            config_digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest() if config else ""
            identity = adapter.record["sha256"] + (f"+config:{config_digest}" if config_digest else "")
        return RenderKey(adapter_sha256=identity, scale=scale, prompt=prompt, seed=seed, **self._render_identity)

    @cached_property
    def _render_identity(self) -> dict:
        """The cache key's parts every render of the run shares."""
        plan, pipeline = self.plan, self.base.pipeline
        return {
            "base_fingerprint": self.base_fingerprint,
            "steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "size": plan.size,
            "scheduler": scheduler_identity(pipeline.scheduler),
            "device": str(pipeline.device),
            "dtype": str(denoiser_of(pipeline).dtype),
        }

    @staticmethod
    def _render_set(renders: list[CachedRender], jobs) -> RenderSet:
        return RenderSet(
            images=np.stack([render.image for render in renders]),
            jobs=jobs,
            nonfinite_jobs=[job for job, render in zip(jobs, renders) if not render.finite],
            layers_run={layer for render in renders for layer in render.layers_run},
        )

    def save_pictures(self, adapter: LoadedAdapter) -> list[dict]:
        """Base, adapted and |diff| heatmap per render as PNG files under the report folder, for the report."""
        from lora_harness.rendering.pictures import diff_heatmap, save_png

        report_dir = self.config.report_dir
        folder = report_dir / "images"
        base, adapted = self.renders(None), self.renders(adapter)

        def saved(image, path) -> str:  # relative, so the report folder can move as a whole
            return str(save_png(image, path).relative_to(report_dir))

        pictures = []
        for index, ((prompt, seed), base_image, adapted_image) in enumerate(
            zip(self.plan.jobs, base.images, adapted.images)
        ):
            heatmap, peak = diff_heatmap(adapted_image, base_image)
            stem = f"{index:02d}-seed{seed}"
            pictures.append(
                {
                    "prompt": prompt,
                    "seed": seed,
                    "base": saved(base_image, folder / "base" / f"{stem}.png"),
                    "adapted": saved(adapted_image, folder / adapter.spec.slot / f"{stem}.png"),
                    "diff": saved(heatmap, folder / adapter.spec.slot / f"{stem}-diff.png"),
                    "diff_max": peak,
                }
            )
        return pictures

    @cached_property
    def clip(self):
        """(ClipModel, "") or (None, why there is none); loaded once, only when a quality check asks."""
        from lora_harness.verdicts.clip_model import load_clip

        supplied = self.hook.pytest_lora_feature_model(harness=self, kind=CLIP)
        if supplied is not None:
            return supplied, ""
        return load_clip(self.config.clip_model, embedded_default=self.config.base_model == TINY)

    @cached_property
    def inception(self):
        """(InceptionFeatures, "") with --inception-weights, or (None, why its file cannot serve)."""
        from lora_harness.config.config import ConfigError
        from lora_harness.verdicts.inception import InceptionFeatures

        supplied = self.hook.pytest_lora_feature_model(harness=self, kind=INCEPTION)
        if supplied is not None:
            return supplied, ""
        try:
            return InceptionFeatures(self.config.inception_weights), ""
        except ConfigError as error:
            return None, str(error)

    def distance_features(self, check: str):
        """(features model, why not, status if none) for fid, kid, cmmd: Inception for fid and kid when given,
        else the CLIP's image features; cmmd is defined on CLIP embeddings."""
        if check != "cmmd" and self.config.inception_weights is not None:
            return (*self.inception, ERROR)
        return (*self.clip, SKIPPED)

    @cached_property
    def reference_images(self):
        from lora_harness.config.config import load_images

        folder = self.config.reference_images
        return load_images(folder, self.plan.size) if folder else None

    @cached_property
    def train_images(self):
        from lora_harness.config.config import load_images

        folder = self.config.train_images
        return load_images(folder, self.plan.size) if folder else None

    def training_captions(self, adapter: LoadedAdapter) -> list[str]:
        """What the adapter was trained on: --train-captions, the Kohya tags in its metadata, the reference's caption."""
        from lora_harness.run.reference import CAPTION
        from lora_harness.verdicts.release_metadata import flat_metadata, tag_counts

        captions = list(self.config.train_captions)
        if adapter.spec.is_reference:
            captions.append(CAPTION)
        captions += list(tag_counts(flat_metadata(adapter.record.get("metadata") or {}).get("ss_tag_frequency")))
        return captions

    def base_renders_again(self) -> RenderSet:
        """The determinism control: the base rendered a second time with the same inputs."""
        if self._base_again is None:
            self.renders(None)
            self._base_again = self._render("the base again (determinism control)", None, 1.0, self.plan.jobs)
        return self._base_again

    # -- checks --------------------------------------------------------------------------------------------------------
    def run_check(self, adapter: LoadedAdapter, check: str, evaluate: Callable[[], CheckResult]):
        """The shared policy around every check: skipped, unloadable and uncontrolled adapters, timing. Whether failed
        controls stop a verdict is the registry's `gated_by_controls`."""
        started = time.perf_counter()
        if adapter.skipped:
            result = CheckResult(adapter.name, check, SKIPPED, message=adapter.skipped)
        elif adapter.problem:
            result = CheckResult(adapter.name, check, FAILED, message=adapter.problem)
        elif (
            self.registry[check].gated_by_controls and self.controls.status == FAILED and not adapter.spec.is_reference
        ):
            result = CheckResult(
                adapter.name, check, ERROR, message=f"controls failed, no verdict: {self.controls.message}"
            )
        else:
            result = evaluate()
            if adapter.defects and result.status in (PASSED, FAILED, SKIPPED):
                # The measurement stays in the record; the verdict cannot be a pass for a broken file.
                own = f"; {check} measured: {result.message}" if result.message else ""
                result.status, result.message = FAILED, "; ".join(adapter.defects) + own
            if self.previous is not None:
                result = compare(result, self.previous, self.config.compare_tolerances, self.registry[check])
        result.duration_s = round(time.perf_counter() - started, 4)
        return result

    @cached_property
    def controls(self) -> Controls:
        """The reference must pass and the untrained twin must fail: else the run cannot tell good from bad."""
        if self.config.reference_steps == 0:
            return Controls(SKIPPED, REFERENCE_SKIPPED)
        if not self.needs.controls:
            return Controls(SKIPPED, "no selected check renders, so the controls were not needed")
        reference = self.adapter(AdapterSpec(REFERENCE, None))
        control = self.adapter(CONTROL)
        base, again = self.renders(None), self.base_renders_again()
        tolerance, floor = self.config.determinism_tolerance, self.config.diff_floor
        results = {}
        for loaded in (reference, control):
            if loaded.problem:
                results[loaded.name] = CheckResult(loaded.name, "load", FAILED, message=loaded.problem)
                continue
            adapted, zero = self.renders(loaded), self.renders(loaded, 0.0)
            results[f"{loaded.name}/wiring"] = evaluate_wiring(
                loaded.name, loaded.application, adapted, zero, base, self.config.scale_zero_tolerance
            )
            results[f"{loaded.name}/pixel_diff"] = evaluate_pixel_diff(
                loaded.name, adapted, base, again, floor, tolerance, loaded.application.nonfinite
            )
        self.unload(CONTROL)
        expected = {"reference/wiring": PASSED, "reference/pixel_diff": PASSED, "control-untrained/pixel_diff": FAILED}
        wrong = [
            f"{key} {results[key].status if key in results else 'missing'} (expected {want}): {results[key].message if key in results else ''}"
            for key, want in expected.items()
            if key not in results or results[key].status != want
        ]
        details = {key: {"status": r.status, "value": r.value, "message": r.message} for key, r in results.items()}
        details["reference_losses"] = self.reference_run.losses
        if wrong:
            return Controls(FAILED, "; ".join(wrong), details)
        return Controls(PASSED, "", details)


def _metadata(adapter_file) -> dict:
    metadata = dict(adapter_file.file_metadata)
    if adapter_file.adapter_config is not None:
        metadata["adapter_config"] = adapter_file.adapter_config
    return metadata
