"""Each adapter's life on the base, one at a time: loaded (read, applied by its kind, proven, announced to the
plugins), judged at the stages frozen_base names, and unloaded after its last check (taken off as its kind takes it
off, the base held to its first digests and restored where it differs), when the verdicts that judge the unloading
are taken again. An adapter whose checks did not run one after another is loaded again, keeping what was found."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lora_harness.bases.base import load_base
from lora_harness.bases.digests import BaseWatch, Evidence, base_parameters
from lora_harness.config.config import AdapterSpec, HarnessConfig
from lora_harness.loading.adapter_file import AdapterLoadError, read_adapter
from lora_harness.loading.application import Application, file_defects
from lora_harness.loading.kinds import apply_adapter
from lora_harness.rendering.progress import Progress
from lora_harness.rendering.render_service import RenderService
from lora_harness.verdicts.results import ERROR, CheckResult


@dataclass
class LoadedAdapter:
    spec: AdapterSpec
    record: dict  # the adapter's entry in results.json
    application: Application | None = None
    problem: str | None = None  # why it could not be applied: every check fails with it
    skipped: str | None = None
    defects: list[str] = field(default_factory=list)  # what is wrong with the file: fails every check
    stages: dict[str, Evidence] = field(default_factory=dict)  # what frozen_base found at each stage
    retakes: list[Retake] = field(default_factory=list)  # verdicts taken again once it is unloaded

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Retake:
    """A verdict taken again once its adapter is off the base: the unloading is a stage it judges (frozen_base)."""

    check: str
    evaluate: Callable[[], CheckResult]
    first: CheckResult  # the verdict its test reported


class UnloadFailed(RuntimeError):
    """Unloading raised, so the base may not be the one first digested: the verdicts to take again are errors saying
    so, carried here for the teardown to record."""

    def __init__(self, message: str, retaken: list):
        super().__init__(message)
        self.retaken = retaken


class AdapterLifecycle:
    def __init__(
        self,
        config: HarnessConfig,
        pipeline,
        signature,
        watch: BaseWatch,
        rendering: RenderService,
        progress: Progress,
        announce: Callable[[LoadedAdapter], None],
        run_check: Callable[[LoadedAdapter, str, Callable[[], CheckResult]], CheckResult],
    ):
        self.config = config  # where the base is restored from
        self.pipeline, self.signature = pipeline, signature
        self.watch = watch  # the session's first digests, every adapter is held to
        self.rendering = rendering
        self.progress = progress
        self.announce = announce  # the plugins' pytest_lora_adapter_loaded
        self.run_check = run_check  # the policy a verdict taken again passes through, as every verdict does
        self.loaded: dict[str, LoadedAdapter] = {}
        # Unloaded adapters, by name: one whose checks did not run together is loaded again (and says so), keeping
        # what frozen_base found and takes again.
        self.unloaded: dict[str, LoadedAdapter] = {}

    def load(self, spec: AdapterSpec, path: Path | None, skipped: str | None = None) -> LoadedAdapter:
        """The adapter in `path` on the base (once while it stays loaded); `skipped`: why it has no file to load."""
        if spec.name not in self.loaded:
            try:
                loaded = self._load(spec, path, skipped)
            except Exception:  # what a crash half-way through injection wrote is put back
                self._settle(f"{spec.name}, whose loading raised", self.watch.cheap(set()))
                raise
            earlier = self.unloaded.get(spec.name)
            if earlier is not None:  # its checks were split up: frozen_base's evidence and re-take carry on
                loaded.stages, loaded.retakes = earlier.stages, earlier.retakes
            self.loaded[spec.name] = loaded
        return self.loaded[spec.name]

    def _load(self, spec: AdapterSpec, path: Path | None, skipped: str | None) -> LoadedAdapter:
        if path is None:
            return LoadedAdapter(spec, {"name": spec.name, "path": None}, skipped=skipped)
        record = {"name": spec.name, "path": str(path)}
        again = " again: its checks did not run one after another" if spec.name in self.unloaded else ""
        self.progress.line(f"loading adapter {spec.name}{again}")
        try:
            adapter_file = read_adapter(path)
            record.update(sha256=adapter_file.sha256, metadata=_metadata(adapter_file))
            application = apply_adapter(self.pipeline, self.signature, adapter_file, spec.slot)
        except AdapterLoadError as error:
            record.update(error=str(error))
            return LoadedAdapter(spec, record, problem=str(error))
        record.update(application.record())
        self.rendering.renderer.adapters[spec.slot] = application.on_base
        defects = file_defects(adapter_file.weights_path, application)
        if defects:
            record["defects"] = defects
        loaded = LoadedAdapter(spec, record, application=application, defects=defects)
        try:
            self.announce(loaded)
        except BaseException:
            self._take_out(spec.slot)  # no layer of it stays for the next adapter
            raise
        return loaded

    def record_stage(self, adapter: LoadedAdapter, stage: str) -> Evidence:
        """The base against the session's first digests, for frozen_base: digests of the parameters of the modules
        the adapter targets and of any parameter whose version counter or storage moved (harness/bases/digests.py)."""
        modules = set(adapter.application.lora_layers) if adapter.application else set()
        evidence = self.watch.cheap(modules)
        earlier = adapter.stages.get(stage)
        # A stage seen again (the adapter loaded again): what either look found stands. The new look is returned, so
        # that only what changed since is restored.
        adapter.stages[stage] = (
            evidence
            if earlier is None
            else Evidence(sorted({*earlier.changed, *evidence.changed}), earlier.digested + evidence.digested)
        )
        return evidence

    def after_unloading(self, adapter: LoadedAdapter, check: str, evaluate: Callable[[], CheckResult], first) -> None:
        """`check`'s verdict (`first`) taken again by `evaluate` once `adapter` is unloaded (see `unload`)."""
        adapter.retakes.append(Retake(check, evaluate, first))

    def unload(self, spec: AdapterSpec) -> list[tuple[LoadedAdapter, Retake, CheckResult]]:
        """The adapter off the base, which is then held to the first digests (and restored where it differs),
        after its last check and before the next adapter loads. Returns the verdicts taken again (after_unloading);
        raises UnloadFailed, carrying them as errors, when the adapter could not be taken off or the base restored."""
        loaded = self.loaded.pop(spec.name, None)
        if loaded is None:
            return []
        self.unloaded[spec.name] = loaded
        try:
            if loaded.application is not None:  # a refused or skipped one has nothing to take out, but ran on the base
                self._take_out(spec.slot)
                self.rendering.forget(spec.slot)
            self._settle(spec.name, self.record_stage(loaded, "after unloading"))
        except Exception as error:
            message = f"unloading {spec.name} raised {type(error).__name__}: {error}"
            failed = [
                (loaded, retake, CheckResult(loaded.name, retake.check, ERROR, message=message))
                for retake in loaded.retakes
            ]
            raise UnloadFailed(message, failed) from error
        return [(loaded, retake, self._retaken(loaded, retake)) for retake in loaded.retakes]

    def unload_all(self) -> None:
        for loaded in list(self.loaded.values()):
            self.unload(loaded.spec)

    def restore(self, names: list[str], who: str) -> None:
        """Reload the base (on the CPU, only while its parameters are copied back) and put back what `who` changed.
        Cheaper than a kept copy of the base, which would double its memory for a case that should never happen."""
        self.progress.line(f"{who} changed {len(names)} base parameters: restoring them from {self.config.base_model}")
        fresh = load_base(replace(self.config, device="cpu", offload=False)).pipeline
        left = self.watch.restore(names, base_parameters(fresh))
        if left:
            raise RuntimeError(
                f"{who} changed {len(names)} base parameters and {len(left)} could not be restored from "
                f"{self.config.base_model}, first {left[0]}: a module was replaced or removed, or the base on disk "
                "changed during the run; the adapters after it would be checked on another base: run it alone"
            )

    def _settle(self, who: str, evidence: Evidence) -> None:
        """Isolation: a base that differs from the first digests is restored before the next adapter loads."""
        if evidence.changed:
            self.restore(evidence.changed, who)

    def _retaken(self, loaded: LoadedAdapter, retake: Retake) -> CheckResult:
        try:
            return self.run_check(loaded, retake.check, retake.evaluate)
        except Exception as error:  # noqa: BLE001 - recorded as the check's error, as a raise in its test would be
            return CheckResult(loaded.name, retake.check, ERROR, message=f"{type(error).__name__}: {error}")

    def _take_out(self, slot: str) -> None:
        """The adapter in `slot` off the base, as its kind takes it off."""
        on_base = self.rendering.renderer.adapters.pop(slot, None)
        if on_base is not None:
            on_base.remove()


def _metadata(adapter_file) -> dict:
    metadata = dict(adapter_file.file_metadata)
    if adapter_file.adapter_config is not None:
        metadata["adapter_config"] = adapter_file.adapter_config
    return metadata
