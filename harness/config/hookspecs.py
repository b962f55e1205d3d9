"""The hooks lora-harness calls, registered by `pytest_addhooks` (plugin.py): what a plugin or a conftest.py
implements to add a check, see each adapter loaded, supply renders or a feature model, or amend a result, instead of
patching the harness."""

from __future__ import annotations

import sys

import pytest


@pytest.hookspec
def pytest_lora_checks(config: pytest.Config):
    """CheckSpecs (harness/config/check_registry.py) to run beside the harness's own, collected after them (one with
    `after_other_checks`: after every other check of its adapter) and listed after them in the reports. Called once,
    when the plugin configures: implement it in a plugin or in the rootdir's conftest.py.

        from pathlib import Path
        from lora_harness.config.check_registry import CheckSpec

        def pytest_lora_checks(config):
            return [CheckSpec("tensor_count", "test_tensor_count.py", folder=Path(__file__).parent / "checks")]
    """


@pytest.hookspec
def pytest_lora_adapter_loaded(harness, adapter) -> None:
    """Called once an adapter is on the base and proven, before its first check runs: `adapter` is the LoadedAdapter
    (harness/run/adapter_lifecycle.py; its `application` says what landed), `harness.base.pipeline` the pipeline. Inspect it,
    or put the pipeline in the state your deployment runs it in. Whatever this changes in the base, frozen_base
    sees; an exception is an error of the adapter's checks, and its layers are taken out before the next one loads.

        def pytest_lora_adapter_loaded(harness, adapter):
            harness.base.pipeline.fuse_lora(adapter_names=[adapter.spec.slot])  # check the fused deployment
    """


@pytest.hookspec(firstresult=True)
def pytest_lora_render(harness, slot: str | None, scale: float, jobs: list[tuple[str, int]], watch, on_step):
    """Renders of `jobs` ((prompt, seed) pairs) in place of the pipeline's: the adapter in `slot` (None: the base) at
    LoRA `scale`; `watch` maps the LoRA layers whose forward is recorded, `on_step` advances the progress bar. Return a
    RenderSet (harness/rendering/renders.py) with one image per job, or None to let `harness.renderer` render them. What a hook
    returns is kept and cached like any render: pass --no-render-cache when it is not what the pipeline would make.

        def pytest_lora_render(harness, slot, scale, jobs, watch, on_step):
            if slot is None:
                return None
            rendered = harness.renderer.render(slot, scale, jobs, watch, on_step)
            rendered.images[:] = rendered.images[0]  # an adapter that paints one picture everywhere
            return rendered
    """


@pytest.hookspec(firstresult=True)
def pytest_lora_feature_model(harness, kind: str):
    """The model whose features score renders, in place of the one the run would load. `kind` is "clip" (clip_heldout,
    mode_collapse, cmmd; fid and kid without --inception-weights), with `image_features(images)` and
    `text_features(prompts)` (unit-norm torch rows), `label` and `self_test` (True: its figures never gate), or
    "inception" (fid and kid with --inception-weights), with `image_features(images)`. None: load it as usual.

        def pytest_lora_feature_model(harness, kind):
            return MyClip() if kind == "clip" else None
    """


@pytest.hookspec
def pytest_lora_check_result(result, adapter) -> None:
    """Amend `result` (a CheckResult, changed in place) before it is recorded and decides its test's outcome; called
    after the harness's own policy (skipped or refused adapters, failed controls, the file's defects, --compare-to).
    `adapter` is the LoadedAdapter checked (harness/run/adapter_lifecycle.py).

        def pytest_lora_check_result(result, adapter):
            if result.check == "param_budget" and result.status == "failed" and adapter.name.startswith("big-"):
                result.status, result.message = "skipped", f"big adapters are budgeted elsewhere: {result.message}"
    """


def standalone_hooks():
    """These hooks with no implementation, for a session built outside pytest (benchmarks): each answers None."""
    import pluggy

    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(sys.modules[__name__])
    return manager.hook
