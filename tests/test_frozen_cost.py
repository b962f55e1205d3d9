"""frozen_base between the session's full digests: the parameters an adapter targets are digested, every other
one is watched by its version counter and storage, and any change is still caught and named (issue 19)."""

import json

import pytest

from tests.helpers import INTERLEAVING

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-k", "frozen_base")
OUTSIDE = "unet.conv_in.weight"  # no adapter of the tests targets it: only the cheap evidence can see it

# A conftest that, once each adapter is loaded, also changes a base parameter the adapter does not target; `change`
# says how.
CHANGES_OUTSIDE = """
import torch

def pytest_lora_adapter_loaded(harness, adapter):
    weight = harness.base.pipeline.unet.conv_in.weight
    {change}
"""


def _frozen(pytester):
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    return next(r for r in document["results"] if r["check"] == "frozen_base")


def _targeted_parameters(write_lora) -> int:
    """The base parameters of the modules the test adapter targets: what a stage digests."""
    from lora_harness.bases.digests import base_parameters
    from lora_harness.bases.families import pipeline_signature
    from lora_harness.bases.tiny_base import build_tiny_pipeline
    from lora_harness.loading.adapter_file import read_adapter
    from lora_harness.loading.kinds import apply_adapter

    pipeline = build_tiny_pipeline()
    adapter = read_adapter(write_lora("kohya", "probe.safetensors"))
    application = apply_adapter(pipeline, pipeline_signature(pipeline), adapter, "a")
    return sum(name.rsplit(".", 1)[0] in application.lora_layers for name in base_parameters(pipeline))


def _run(pytester, adapter):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--adapter", adapter, *FAST)


def test_a_good_adapter_passes_digesting_only_what_it_targets(pytester, write_lora):
    result = _run(pytester, write_lora("kohya", "good.safetensors"))
    result.assert_outcomes(passed=1)
    record = _frozen(pytester)
    targeted = _targeted_parameters(write_lora)
    assert record["details"]["digested"] == {"after rendering": targeted, "after unloading": targeted}
    assert 0 < targeted < record["details"]["parameters"] / 5  # 40 of the tiny base's 424 tensors: what it targets


@pytest.mark.parametrize(
    "change",
    [
        "with torch.no_grad():\n        weight.add_(0.01)",  # in place: its version counter moves
        "weight.data = weight.data + 0.01",  # a new storage: its data pointer moves
    ],
    ids=["in-place", "new-storage"],
)
def test_a_change_outside_the_targeted_modules_fails_frozen_base_by_name(pytester, write_lora, change):
    pytester.makeconftest(CHANGES_OUTSIDE.format(change=change))
    result = _run(pytester, write_lora("kohya", "changer.safetensors"))
    result.assert_outcomes(failed=1)
    record = _frozen(pytester)
    assert record["status"] == "failed"
    assert record["details"]["changed"] == {"after rendering": [OUTSIDE], "after unloading": [OUTSIDE]}
    assert f"1 base parameters changed after rendering: {OUTSIDE}" in record["message"]
    assert record["details"]["digested"]["after rendering"] == _targeted_parameters(write_lora) + 1


def test_a_write_through_data_that_no_counter_sees_fails_the_run_at_its_closing_digest(pytester, write_lora):
    """`.data.add_` moves neither the version counter nor the storage: the session's last full digest names it."""
    pytester.makeconftest(CHANGES_OUTSIDE.format(change="weight.data.add_(0.01)"))
    result = _run(pytester, write_lora("kohya", "sly.safetensors"))
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)  # frozen_base's evidence was blind to it; the session's end is not
    closing = f"*1 base parameters differ from the session's first digests at its end, first {OUTSIDE}:*"
    result.stdout.fnmatch_lines([closing])


def test_a_run_interrupted_mid_check_still_takes_its_closing_digest(pytester, write_lora):
    """A stop mid-check (pytest.exit, as Ctrl-C) skips the item's teardown: pytest_sessionfinish takes the adapter off
    and the last digest."""
    interrupting = (
        CHANGES_OUTSIDE.format(change="weight.data.add_(0.01)")
        + """

def pytest_lora_check_result(result, adapter):
    import pytest

    pytest.exit("stopped mid-check")
"""
    )
    pytester.makeconftest(interrupting)
    result = _run(pytester, write_lora("kohya", "sly.safetensors"))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    closing = f"*lora-harness: at the run's end: 1 base parameters differ from the session's first digests*{OUTSIDE}*"
    result.stdout.fnmatch_lines([closing])
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    assert document["run"]["status"] == "interrupted"


def test_an_unloading_that_cannot_restore_the_base_is_frozen_base_s_error(pytester, write_lora):
    """A parameter removed from the base cannot be put back: the re-taken verdict is an error saying so."""
    pytester.makeconftest(
        CHANGES_OUTSIDE.replace("weight = ", "unet = ")
        .replace(".conv_in.weight", "")
        .format(change="unet.conv_in.bias = None")
    )
    result = _run(pytester, write_lora("kohya", "remover.safetensors"))
    result.assert_outcomes(failed=1, errors=1)  # frozen_base fails on the missing bias, its teardown on the restore
    record = _frozen(pytester)
    assert record["status"] == "error"
    assert record["message"].startswith(
        "unloading remover.safetensors raised RuntimeError: remover.safetensors changed"
    )
    assert "could not be restored" in record["message"] and "unet.conv_in.bias" in record["message"]


# A plugin check collected after frozen_base (after_other_checks, registered after it) that writes the base in place.
SCRIBBLER_CONFTEST = """
from pathlib import Path

from lora_harness.config.check_registry import CheckSpec


def pytest_lora_checks(config):
    return [CheckSpec("scribble", "test_scribble.py", folder=Path(__file__).parent / "extra", after_other_checks=True)]
"""
SCRIBBLER = """
import torch

from lora_harness.verdicts.results import verdict


def test_scribble(adapter, harness, record_check):
    if adapter.name == "changer.safetensors":
        with torch.no_grad():
            harness.base.pipeline.unet.conv_in.weight.add_(0.01)
    record_check(adapter, harness.run_check(adapter, "scribble", lambda: verdict(adapter.name, "scribble", True, 0, 0, "", {})))
"""


def test_a_change_after_frozen_base_ran_fails_it_once_the_adapter_is_unloaded(pytester, write_lora):
    """frozen_base's verdict is taken again after its adapter's last check: the unloading is a stage it judges.
    The change is restored before the next adapter loads, whose verdict it does not touch."""
    pytester.makeconftest(SCRIBBLER_CONFTEST)
    (pytester.path / "extra").mkdir()
    (pytester.path / "extra" / "test_scribble.py").write_text(SCRIBBLER)
    adapters = [write_lora("kohya", "changer.safetensors"), write_lora("kohya", "clean.safetensors")]
    selected = ("-k", "frozen_base or scribble", "--junitxml", "junit.xml")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *FAST[:-2], *selected, *_adapter_args(adapters))
    result.assert_outcomes(passed=4, errors=1)  # the changer's last check (scribble) errors at its teardown
    message = f"*changer.safetensors frozen_base, once unloaded: 1 base parameters changed after unloading: {OUTSIDE}*"
    result.stdout.fnmatch_lines([message])
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    records = {(r["adapter"], r["check"]): r for r in document["results"]}
    scribbled = records[("changer.safetensors", "frozen_base")]
    assert scribbled["status"] == "failed" and scribbled["details"]["changed"] == {"after unloading": [OUTSIDE]}
    assert records[("clean.safetensors", "frozen_base")]["status"] == "passed"  # restored before it loaded
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count('name="lora_status" value="failed"') == 0  # scribble's own properties were left as its own


def _adapter_args(paths) -> list[str]:
    return [argument for path in paths for argument in ("--adapter", str(path))]


def test_a_change_after_frozen_base_ran_is_judged_when_its_adapter_s_checks_are_split_up(pytester, write_lora):
    """Checks of two adapters interleaved (tests/test_isolation.py's reordering conftest): the adapter is loaded again
    for its later checks, and frozen_base, taken again at each unloading, still judges what they changed."""

    pytester.makeconftest(SCRIBBLER_CONFTEST + INTERLEAVING)
    (pytester.path / "extra").mkdir()
    (pytester.path / "extra" / "test_scribble.py").write_text(
        SCRIBBLER.replace("changer.safetensors", "first.safetensors")
    )
    adapters = [write_lora("kohya", "first.safetensors"), write_lora("kohya", "second.safetensors")]
    selected = ("-k", "frozen_base or scribble")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *FAST[:-2], *selected, *_adapter_args(adapters))
    result.assert_outcomes(passed=4, errors=1)  # first's scribble: its teardown's re-taken frozen_base fails
    result.stdout.fnmatch_lines(["*loading adapter first.safetensors again*"])
    document = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    records = {(r["adapter"], r["check"]): r for r in document["results"]}
    assert records[("first.safetensors", "frozen_base")]["details"]["changed"] == {"after unloading": [OUTSIDE]}
    assert records[("second.safetensors", "frozen_base")]["status"] == "passed"
