"""HarnessSession: the run's state, kept in `config.stash`, and the order of its stages. `prepare` takes the checks
collected; `start` loads the base, trains the reference overfit where it is needed and renders the baselines, once,
before the first adapter touches the base; adapters then load one at a time and are unloaded after their last
check (harness/run/adapter_lifecycle.py), their renders come from the render service, `run_check` is the policy
every verdict passes through. The controls decide whether any verdict can be trusted."""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from lora_harness.bases.digests import BaseWatch, Evidence, fingerprint
from lora_harness.bases.families import denoiser_of, family_of_pipeline
from lora_harness.config.check_registry import (
    BASE,
    BASE_AGAIN,
    BUILTIN,
    CONTROL_CHECKS,
    CONTROLS,
    HELDOUT,
    MAIN,
    UNTRAINED,
    CheckRegistry,
)
from lora_harness.config.config import REFERENCE, AdapterSpec, HarnessConfig
from lora_harness.config.hookspecs import standalone_hooks
from lora_harness.rendering.progress import Progress
from lora_harness.rendering.render_cache import RenderCache, scheduler_identity
from lora_harness.rendering.render_needs import RenderNeeds
from lora_harness.rendering.render_service import RenderService, RenderTarget
from lora_harness.rendering.renders import Renderer, RenderPlan, RenderSet
from lora_harness.run.adapter_lifecycle import AdapterLifecycle, LoadedAdapter, Retake
from lora_harness.run.check_policy import CheckPolicy
from lora_harness.verdicts.feature_models import FeatureModels
from lora_harness.verdicts.pixel_diff import evaluate_pixel_diff
from lora_harness.verdicts.results import FAILED, PASSED, SKIPPED, CheckResult
from lora_harness.verdicts.wiring import evaluate_wiring

CONTROL = AdapterSpec(UNTRAINED, None, slot="control_untrained")
REFERENCE_SKIPPED = "--reference-steps 0: the reference overfit and its controls were not run"
NO_FAMILY_MODULE = (
    "{pipeline} has no family module in lora-harness, so no reference overfit is trained on it: the reference and "
    "its controls were not run; adapters for it get the checks that need no training example"
)


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
        # `previous`: regression.Previous, with --compare-to; only the policy reads it
        self.policy = CheckPolicy(registry, previous, config.compare_tolerances, self.run_controls)
        self.progress = progress or Progress()  # silent outside pytest
        self.render_cache = RenderCache(config.render_cache) if config.render_cache else None
        self.features = FeatureModels(
            config,
            supplied=lambda kind: self.hook.pytest_lora_feature_model(harness=self, kind=kind),
            progress=self.progress,
        )
        self.checks: list[str] | None = None  # the checks collected (prepare); None: all of them
        self.needs = self._needs()
        self.unet_forward_passes = 0  # the denoiser's (U-Net or transformer); results.json names it so
        self._reported = {"unet_forward_passes": 0, "cache_hits": 0, "cache_written": 0}
        # made by start(), in this order
        self.base = None
        self.rendering: RenderService | None = None
        self.lifecycle: AdapterLifecycle | None = None  # each adapter's load, stages, unload and restore
        self.reference_run = None  # the reference overfit's training run, where it was needed
        self.after_training: Evidence | None = None  # the full digest after the reference's training
        self.controls_run: Controls | None = None  # the controls' outcome, once run_controls ran
        self.started = False
        self.closed = False

    def prepare(self, checks: list[str] | None) -> None:
        """The checks collected (pytest_collection_finish) decide the render plan and whether the controls run."""
        self.checks = checks
        self.needs = self._needs()

    def start(self) -> None:
        """What happens once, before the first adapter touches the base, in this order: the base loads and is
        digested; the reference overfit trains, where a check or the controls need it; the renders every adapter
        is compared with are made. A stage that raises is tried again by the next check, which records the error."""
        if self.started:
            return
        if self.base is None:
            self.base = self._load_base()
            # The base lives as long as the session: out of the garbage collector's sight (until the plugin releases
            # the session, after pytest's own last collections), no full collection walks its objects again.
            gc.collect()
            gc.freeze()
        if self.rendering is None:
            self.rendering = self._render_service()
        if self.lifecycle is None:
            self.lifecycle = AdapterLifecycle(
                self.config,
                self.base.pipeline,
                self.base.signature,
                self.watch,
                self.rendering,
                self.progress,
                announce=lambda loaded: self.hook.pytest_lora_adapter_loaded(harness=self, adapter=loaded),
                run_check=self.run_check,
            )
        if self.reference_run is None and self._reference_needed:
            self.reference_run = self._train_reference()
        self.started = True
        self._render_baselines()

    # -- base -------------------------------------------------------------------------------------------------
    def _load_base(self):
        from lora_harness.bases.base import load_base

        self.progress.line(
            f"loading base model {self.config.base_model}, {self.config.dtype} ({self.config.dtype_choice}); "
            f"offload {self.config.offload_choice}"
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

    @property
    def plan(self) -> RenderPlan:
        return self.rendering.plan

    @property
    def renderer(self) -> Renderer:
        return self.rendering.renderer

    def _render_service(self) -> RenderService:
        config, base = self.config, self.base
        plan = RenderPlan(
            config.prompts,
            tuple(range(config.render_seeds)),
            config.render_size or base.native_size,
            config.render_steps,
            base.guidance_scale,
            config.render_batch_size,
            config.render_frames if family_of_pipeline(base.pipeline).rendering.video else 1,
        )
        pipeline = base.pipeline
        identity = {  # the cache key's parts every render of the run shares
            "base_fingerprint": self.base_fingerprint,
            "steps": plan.steps,
            "guidance_scale": plan.guidance_scale,
            "size": plan.size,
            "frames": plan.frames,
            "scheduler": scheduler_identity(pipeline.scheduler),
            "device": str(pipeline._execution_device),  # under model CPU offload `pipeline.device` says cpu
            "dtype": str(denoiser_of(pipeline).dtype),
        }
        return RenderService(
            plan,
            self.needs,
            {MAIN: plan.prompts, HELDOUT: config.heldout_prompts},
            Renderer(pipeline, plan, config.device),
            lambda **job: self.hook.pytest_lora_render(harness=self, **job),
            identity,
            self.render_cache,
            self.progress,
        )

    def _needs(self) -> RenderNeeds:
        """What the checks collected ask to be rendered, and whether the controls run."""
        specs = [self.registry[name] for name in (self.checks if self.checks is not None else self.registry.names)]
        return RenderNeeds.of_checks(
            specs,
            features=self.features.expected,
            corpus=self.config.reference_images is not None,
            train_images=self.config.train_images is not None,
            reference_steps=self.config.reference_steps,
        )

    # -- reference overfit --------------------------------------------------------------------------------------
    @property
    def _reference_needed(self) -> bool:
        """Trained for the controls, or because the reference itself is checked (--adapter reference)."""
        checked = any(spec.is_reference for spec in self.config.checked_adapters)
        return self._no_reference is None and (self.needs.controls or checked)

    @property
    def _no_reference(self) -> str | None:
        """Why there is no reference overfit, once the base is loaded: --reference-steps 0, or a base whose family
        was made from its pipeline class (no module says how to encode a training example for it)."""
        if self.config.reference_steps == 0:
            return REFERENCE_SKIPPED
        family = family_of_pipeline(self.base.pipeline)
        return NO_FAMILY_MODULE.format(pipeline=type(self.base.pipeline).__name__) if family.reference is None else None

    def _train_reference(self):
        """Trained once, before any adapter is loaded, so the base it leaves is the one every adapter sees."""
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
            self.lifecycle.restore(self.after_training.changed, "the reference's training")
        return run

    # -- adapters -------------------------------------------------------------------------------------------------
    def adapter(self, spec: AdapterSpec) -> LoadedAdapter:
        """The adapter on the base (harness/run/adapter_lifecycle.py); the reference and its control from the
        reference's training run, or skipped saying why there is none."""
        self.start()
        path, skipped = spec.path, None
        if path is None:  # the reference or its negative control
            run = self.reference_run
            if run is None:
                skipped = self._no_reference
            else:
                path = run.reference_dir if spec.name == REFERENCE else run.control_dir
        return self.lifecycle.load(spec, path, skipped)

    def record_stage(self, adapter: LoadedAdapter, stage: str) -> Evidence:
        return self.lifecycle.record_stage(adapter, stage)

    def after_unloading(self, adapter: LoadedAdapter, check: str, evaluate: Callable[[], CheckResult], first) -> None:
        self.lifecycle.after_unloading(adapter, check, evaluate, first)

    def unload(self, spec: AdapterSpec) -> list[tuple[LoadedAdapter, Retake, CheckResult]]:
        return self.lifecycle.unload(spec) if self.lifecycle is not None else []

    def finish(self) -> None:
        """What the last item's teardown does, for a run that stopped before it (-x, --maxfail, an interrupt): every
        adapter still loaded taken off, then the closing digest."""
        if self.lifecycle is not None:
            self.lifecycle.unload_all()
        self.close()

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
                self.run_controls()
        except Exception:  # noqa: BLE001 - raised again, in its own check's record, when that check renders
            pass

    def close(self) -> None:
        """The session's last full digest, once: a change written around the cheap evidence (through `.data` or a
        shared buffer) still ends the run named. Raises naming what changed."""
        if self.base is None or self.closed:
            return
        self.closed = True
        names = self.watch.full().changed
        if names:
            raise RuntimeError(
                f"{len(names)} base parameters differ from the session's first digests at its end, first "
                f"{', '.join(names[:3])}: written without moving their version counter or storage (through `.data` "
                "or a shared buffer), so no adapter's frozen_base saw it and the verdicts after it ran on another "
                "base; run each adapter alone (-k ADAPTER) to find the one that writes them"
            )

    # -- renders ----------------------------------------------------------------------------------------------------
    def renders(self, adapter: LoadedAdapter | None, scale: float = 1.0, prompts=None) -> RenderSet:
        """Renders of `prompts` (default: the main ones) x the seeds of the base (None) or `adapter` at `scale`, from
        memory, the disk cache or the pipeline (harness/rendering/render_service.py)."""
        self.start()
        prompts = self.plan.prompts if prompts is None else tuple(prompts)
        if adapter is None:
            return self.rendering.renders(RenderTarget(None), 1.0, prompts)
        return self.rendering.renders(self._rendered(adapter), scale, prompts)

    def _rendered(self, adapter: LoadedAdapter) -> RenderTarget:
        spec = adapter.spec
        # a PEFT folder's adapter_config.json (alpha, targets) decides pixels too
        config = adapter.record.get("metadata", {}).get("adapter_config")
        config_digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest() if config else ""
        return RenderTarget(
            slot=spec.slot,
            name=spec.name,
            role="control" if spec == CONTROL else "reference" if spec.is_reference else "adapter",
            identity=adapter.record["sha256"] + (f"+config:{config_digest}" if config_digest else ""),
            layers=adapter.application.lora_layers if adapter.application else None,
        )

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

    def base_renders_again(self) -> RenderSet:
        """The determinism control: the base rendered a second time with the same inputs."""
        self.start()
        return self.rendering.base_again()

    # -- checks --------------------------------------------------------------------------------------------------------
    def run_check(self, adapter: LoadedAdapter, check: str, evaluate: Callable[[], CheckResult]) -> CheckResult:
        """`evaluate()` through the policy every verdict passes (harness/run/check_policy.py)."""
        return self.policy.run(adapter, check, evaluate)

    def run_controls(self) -> Controls:
        """The reference must pass and the untrained twin must fail: else the run cannot tell good from bad. Run once,
        by start()'s baselines or the first check gated on them; one that raised is run again by the next."""
        if self.controls_run is None:
            self.controls_run = self._controls()
        return self.controls_run

    def _controls(self) -> Controls:
        if self._no_reference is not None:
            return Controls(SKIPPED, self._no_reference)
        if not self.needs.controls:
            return Controls(SKIPPED, "no selected check renders, so the controls were not needed")
        reference = self.adapter(AdapterSpec(REFERENCE, None))
        control = self.adapter(CONTROL)
        base, again = self.renders(None), self.base_renders_again()
        tolerance, floor = self.config.determinism_tolerance, self.config.diff_floor
        evaluate = {
            "wiring": lambda loaded, adapted, zero: evaluate_wiring(
                loaded.name, loaded.application, adapted, zero, base, self.config.scale_zero_tolerance
            ),
            "pixel_diff": lambda loaded, adapted, zero: evaluate_pixel_diff(
                loaded.name, adapted, base, again, floor, tolerance, loaded.application.nonfinite
            ),
        }
        results = {}
        for loaded in (reference, control):
            if loaded.problem:
                results[loaded.name] = CheckResult(loaded.name, "load", FAILED, message=loaded.problem)
                continue
            adapted, zero = self.renders(loaded), self.renders(loaded, 0.0)
            for check in CONTROL_CHECKS:
                results[f"{loaded.name}/{check}"] = evaluate[check](loaded, adapted, zero)
        self.unload(CONTROL)
        wrong = []
        for control_spec in CONTROLS:
            key = f"{control_spec.adapter}/{control_spec.check}"
            found = results.get(key)
            if found is None or found.status != control_spec.expected:
                status, message = (found.status, found.message) if found else ("missing", "")
                wrong.append(f"{key} {status} (expected {control_spec.expected}): {message}")
        details = {key: {"status": r.status, "value": r.value, "message": r.message} for key, r in results.items()}
        details["reference_losses"] = self.reference_run.losses
        if wrong:
            return Controls(FAILED, "; ".join(wrong), details)
        return Controls(PASSED, "", details)
