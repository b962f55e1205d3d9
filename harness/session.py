"""HarnessSession: the run's state, kept in `config.stash`. Loads the base once, adapters one at a time,
caches renders, and owns the controls that decide whether any verdict can be trusted."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from .adapter_file import AdapterLoadError, read_adapter
from .config import REFERENCE, AdapterSpec, HarnessConfig
from .digests import digest_parameters, fingerprint
from .injection import Application, apply_adapter, file_defects
from .pixel_diff import evaluate_pixel_diff
from .regression import compare
from .renders import RenderPlan, Renderer, RenderSet
from .results import ERROR, FAILED, PASSED, SKIPPED, CheckResult
from .wiring import evaluate_wiring

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
    stage_digests: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Controls:
    status: str  # passed | failed | skipped
    message: str
    details: dict = field(default_factory=dict)


class HarnessSession:
    def __init__(self, config: HarnessConfig, progress: Callable[[str], None] = lambda line: None, previous=None):
        self.config = config
        self.previous = previous  # regression.Previous, with --compare-to
        self.progress = progress
        self.unet_forward_passes = 0
        self._loaded: dict[str, LoadedAdapter] = {}
        self._renders: dict[tuple[str | None, float], RenderSet] = {}
        self._base_again: RenderSet | None = None
        self._forward_passes_reported = 0
        self.after_training_digests: dict[str, str] | None = None

    # -- base -------------------------------------------------------------------------------------------------
    @cached_property
    def base(self):
        from .base import load_base

        self.progress(f"loading base model {self.config.base_model}")
        base = load_base(self.config)
        base.pipeline.unet.register_forward_pre_hook(self._count_forward)
        self.base_digests = digest_parameters(base.pipeline)
        self.base_fingerprint = fingerprint(self.base_digests)
        return base

    def _count_forward(self, *_):
        self.unet_forward_passes += 1

    def take_forward_passes(self) -> int:
        """U-Net forward calls since the last call: each test report carries its share, so xdist can add them up."""
        delta = self.unet_forward_passes - self._forward_passes_reported
        self._forward_passes_reported = self.unet_forward_passes
        return delta

    def base_summary(self) -> dict:
        return self.base.summary(self.base_fingerprint)

    @cached_property
    def plan(self) -> RenderPlan:
        seeds = tuple(range(self.config.render_seeds))
        size = self.config.render_size or self.base.native_size
        return RenderPlan(self.config.prompts, seeds, size, self.config.render_steps)

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer(self.base.pipeline, self.plan, self.config.device)

    # -- reference overfit --------------------------------------------------------------------------------------
    @cached_property
    def reference_run(self):
        """Trained once, before any adapter is loaded, so the base it leaves is the one every adapter sees."""
        if self.config.reference_steps == 0:
            return None
        from .reference import train_reference

        pipeline = self.base.pipeline
        steps = self.config.reference_steps
        report_every = max(1, steps // 5)

        def step_progress(step: int, total: int, loss: float) -> None:
            if step % report_every == 0 or step == total:
                self.progress(f"reference overfit: step {step}/{total}, loss {loss:.4f}")

        run = train_reference(pipeline, steps, self.plan.size, self.config.device, self.config.report_dir, step_progress)
        self.after_training_digests = digest_parameters(pipeline)
        return run

    # -- adapters -------------------------------------------------------------------------------------------------
    def adapter(self, spec: AdapterSpec) -> LoadedAdapter:
        if spec.name not in self._loaded:
            self._loaded[spec.name] = self._load(spec)
        return self._loaded[spec.name]

    def _load(self, spec: AdapterSpec) -> LoadedAdapter:
        path = spec.path
        if path is None:  # the reference or its negative control
            run = self.reference_run
            if run is None:
                return LoadedAdapter(spec, {"name": spec.name, "path": None}, skipped=REFERENCE_SKIPPED)
            path = run.reference_dir if spec.name == REFERENCE else run.control_dir
        record = {"name": spec.name, "path": str(path)}
        self.reference_run  # noqa: B018 - training must happen before the first adapter touches the base
        self.progress(f"loading adapter {spec.name}")
        try:
            adapter_file = read_adapter(path)
            record.update(sha256=adapter_file.sha256, metadata=_metadata(adapter_file))
            application = apply_adapter(self.base.pipeline, self.base.cross_attention_width, adapter_file, spec.slot)
        except AdapterLoadError as error:
            record.update(error=str(error))
            return LoadedAdapter(spec, record, problem=str(error))
        record.update(application.record())
        defects = file_defects(adapter_file.weights_path, application)
        if defects:
            record["defects"] = defects
        return LoadedAdapter(spec, record, application=application, defects=defects)

    def unload(self, spec: AdapterSpec) -> None:
        loaded = self._loaded.pop(spec.name, None)
        if loaded is None or loaded.application is None:
            return
        pipeline = self.base.pipeline
        with warnings.catch_warnings():  # peft says which adapter it activates instead: none is meant to be
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted", category=UserWarning)
            pipeline.delete_adapters(spec.slot)
        if not any(pipeline.get_list_adapters().values()):
            pipeline.unload_lora_weights()  # the last adapter: take the peft wrappers out too
        self._renders = {key: value for key, value in self._renders.items() if key[0] != spec.slot}
        loaded.stage_digests["after unloading"] = digest_parameters(pipeline)

    # -- renders ----------------------------------------------------------------------------------------------------
    def renders(self, adapter: LoadedAdapter | None, scale: float = 1.0) -> RenderSet:
        name = adapter.spec.slot if adapter else None
        key = (name, scale if adapter else 1.0)
        if key not in self._renders:
            if adapter is None:
                self.reference_run  # noqa: B018 - the base is rendered as the adapters will see it
            what = f"adapter {adapter.name} at scale {scale:g}" if adapter else "base"
            self.progress(f"rendering {what}: {len(self.plan.jobs)} images, {self.plan.steps} steps, {self.plan.size}px")
            watch = adapter.application.lora_layers if adapter and scale == 1.0 else None
            self._renders[key] = self.renderer.render(name, scale, watch)
            if adapter is not None and scale == 1.0:
                adapter.stage_digests["after rendering"] = digest_parameters(self.base.pipeline)
        return self._renders[key]

    def save_pictures(self, adapter: LoadedAdapter) -> list[dict]:
        """Base, adapted and |diff| heatmap per render as PNG files under the report folder, for the report."""
        from .pictures import diff_heatmap, save_png

        report_dir = self.config.report_dir
        folder = report_dir / "images"
        base, adapted = self.renders(None), self.renders(adapter)

        def saved(image, path) -> str:  # relative, so the report folder can move as a whole
            return str(save_png(image, path).relative_to(report_dir))

        pictures = []
        for index, ((prompt, seed), base_image, adapted_image) in enumerate(zip(self.plan.jobs, base.images, adapted.images)):
            heatmap, peak = diff_heatmap(adapted_image, base_image)
            stem = f"{index:02d}-seed{seed}"
            pictures.append({
                "prompt": prompt,
                "seed": seed,
                "base": saved(base_image, folder / "base" / f"{stem}.png"),
                "adapted": saved(adapted_image, folder / adapter.spec.slot / f"{stem}.png"),
                "diff": saved(heatmap, folder / adapter.spec.slot / f"{stem}-diff.png"),
                "diff_max": peak,
            })
        return pictures

    def heldout_renders(self, adapter: LoadedAdapter | None, prompts: list[str]) -> RenderSet:
        """Renders of held-out prompts, same seeds and settings as the main plan; cached like the others."""
        plan = RenderPlan(tuple(prompts), self.plan.seeds, self.plan.size, self.plan.steps)
        key = (adapter.spec.slot if adapter else None, "heldout", plan.prompts)
        if key not in self._renders:
            self.reference_run  # noqa: B018 - the base is rendered as the adapters will see it
            what = f"adapter {adapter.name}" if adapter else "base"
            self.progress(f"rendering held-out prompts for {what}: {len(plan.jobs)} images")
            self._renders[key] = self.renderer.render(adapter.spec.slot if adapter else None, 1.0, None, plan)
        return self._renders[key]

    @cached_property
    def clip(self):
        """(ClipModel, "") or (None, why there is none); loaded once, only when a quality check asks."""
        from .clip_model import load_clip

        return load_clip(self.config.clip_model, base_is_tiny=self.config.base_path is None)

    @cached_property
    def reference_images(self):
        from .config import load_images

        folder = self.config.reference_images
        return load_images(folder, self.plan.size) if folder else None

    @cached_property
    def train_images(self):
        from .config import load_images

        folder = self.config.train_images
        return load_images(folder, self.plan.size) if folder else None

    def training_captions(self, adapter: LoadedAdapter) -> list[str]:
        """What the adapter was trained on: --train-captions, the Kohya tags in its metadata, the reference's caption."""
        from .reference import CAPTION
        from .release_metadata import flat_metadata, tag_counts

        captions = list(self.config.train_captions)
        if adapter.spec.is_reference:
            captions.append(CAPTION)
        captions += list(tag_counts(flat_metadata(adapter.record.get("metadata") or {}).get("ss_tag_frequency")))
        return captions

    def base_renders_again(self) -> RenderSet:
        """The determinism control: the base rendered a second time with the same inputs."""
        if self._base_again is None:
            self.renders(None)
            self._base_again = self.renderer.render(None)
        return self._base_again

    # -- checks --------------------------------------------------------------------------------------------------------
    def run_check(self, adapter: LoadedAdapter, check: str, evaluate: Callable[[], CheckResult], uses_renders: bool):
        """The shared policy around every check: skipped, unloadable and uncontrolled adapters, timing."""
        started = time.perf_counter()
        if adapter.skipped:
            result = CheckResult(adapter.name, check, SKIPPED, message=adapter.skipped)
        elif adapter.problem:
            result = CheckResult(adapter.name, check, FAILED, message=adapter.problem)
        elif uses_renders and self.controls.status == FAILED and not adapter.spec.is_reference:
            result = CheckResult(adapter.name, check, ERROR, message=f"controls failed, no verdict: {self.controls.message}")
        else:
            result = evaluate()
            if adapter.defects and result.status in (PASSED, FAILED, SKIPPED):
                # The measurement stays in the record; the verdict cannot be a pass for a broken file.
                own = f"; {check} measured: {result.message}" if result.message else ""
                result.status, result.message = FAILED, "; ".join(adapter.defects) + own
            if self.previous is not None:
                result = compare(result, self.previous, self.config.compare_tolerances)
        result.duration_s = round(time.perf_counter() - started, 4)
        return result

    @cached_property
    def controls(self) -> Controls:
        """The reference must pass and the untrained twin must fail: else the run cannot tell good from bad."""
        if self.config.reference_steps == 0:
            return Controls(SKIPPED, REFERENCE_SKIPPED)
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
