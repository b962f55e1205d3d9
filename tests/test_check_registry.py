"""The check registry: the built-in checks' facts as the plugin, the render plan, --compare-to and the reports had them
before they were gathered into one table, and a check added through the registry alone (pytest_lora_checks)."""

import json
from pathlib import Path

import pytest

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
    CheckSpec,
    report_order,
)
from lora_harness.run.regression import Previous, compare, parse_tolerances
from lora_harness.verdicts.results import FAILED, PASSED, CheckResult

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
BREAK = "_\u200b"  # report.html's headers break check names after each underscore


def test_the_built_in_checks_keep_their_order_renders_gates_and_tolerances():
    collected = [spec.name for spec in BUILTIN.in_collection_order()]
    assert collected == [
        "wiring",
        "param_budget",
        "pixel_diff",
        "release_metadata",
        "weight_health",
        "clip_heldout",
        "fid",
        "kid",
        "cmmd",
        "mode_collapse",
        "frozen_base",  # last for its adapter: it judges what the others left in the base
    ]
    assert [path.name for path in BUILTIN.module_paths()] == [
        "test_wiring.py",
        "test_param_budget.py",
        "test_pixel_diff.py",
        "test_release_metadata.py",
        "test_weight_health.py",
        "test_clip_heldout.py",
        "test_distribution.py",
        "test_mode_collapse.py",
        "test_frozen_base.py",
    ]
    assert all(path.is_file() for path in BUILTIN.module_paths())
    assert BUILTIN.names[:6] == (
        "wiring",
        "frozen_base",
        "param_budget",
        "pixel_diff",
        "release_metadata",
        "weight_health",
    )
    shared = {(BASE, MAIN), (ADAPTED, MAIN)}
    renders = {spec.name: spec.renders for spec in BUILTIN if spec.renders}
    assert renders == {
        "wiring": shared | {(AT_ZERO, MAIN)},
        "pixel_diff": shared | {(BASE_AGAIN, MAIN)},
        "frozen_base": {(ADAPTED, MAIN)},
        "clip_heldout": {(BASE, HELDOUT), (ADAPTED, HELDOUT)},
        "fid": shared,
        "kid": shared,
        "cmmd": shared,
        "mode_collapse": shared,
    }
    assert BUILTIN["mode_collapse"].train_image_renders == {(ADAPTED, HELDOUT)}
    # frozen_base renders for its "after rendering" stage, but failed controls do not make its verdict an error
    assert {spec.name for spec in BUILTIN if spec.gated_by_controls} == set(renders) - {"frozen_base"}
    assert {spec.name: spec.features for spec in BUILTIN if spec.features} == {
        "clip_heldout": {CLIP},
        "fid": {CLIP, INCEPTION},
        "kid": {CLIP, INCEPTION},
        "cmmd": {CLIP},
        "mode_collapse": {CLIP},
    }
    assert {spec.name for spec in BUILTIN if spec.needs_corpus} == {"fid", "kid", "cmmd"}
    assert BUILTIN.default_tolerances() == {"wiring": 0.0, "frozen_base": 0.0, "param_budget": 0.10, "pixel_diff": 0.25}
    assert {spec.name: spec.higher_is_better for spec in BUILTIN if spec.higher_is_better is not None} == {
        "wiring": True,
        "frozen_base": False,
        "param_budget": False,
        "pixel_diff": True,
    }


def test_reports_list_the_built_in_checks_in_registry_order_then_the_others_as_given():
    assert report_order(["extra", "pixel_diff", "wiring", "another", "pixel_diff"]) == [
        "wiring",
        "pixel_diff",
        "extra",
        "another",
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([CheckSpec("wiring", "test_other.py")], "more than one CheckSpec named wiring"),
        ([CheckSpec("mine", "test_wiring.py", folder=Path("/elsewhere"))], "another check's module is also named"),
    ],
)
def test_a_registry_refuses_doubled_names_and_module_files(extra, message):
    with pytest.raises(ValueError, match=message):
        BUILTIN.with_checks(extra)


def test_a_spec_compared_by_compare_to_needs_a_direction_and_a_tolerance():
    with pytest.raises(ValueError, match="higher_is_better and tolerance go together"):
        CheckSpec("mine", "test_mine.py", tolerance=0.1)
    with pytest.raises(ValueError, match="tolerance must be 0 or more"):
        CheckSpec("mine", "test_mine.py", higher_is_better=True, tolerance=-1)


def test_compare_to_judges_a_registered_check_by_its_spec(tmp_path):
    spec = CheckSpec("latency", "test_latency.py", higher_is_better=False, tolerance=0.5)
    registry = BUILTIN.with_checks([spec])
    tolerances = parse_tolerances(["latency=0.1"], registry)
    assert tolerances["latency"] == 0.1 and tolerances["pixel_diff"] == 0.25
    with pytest.raises(ValueError, match="CHECK in wiring, frozen_base, param_budget, pixel_diff, got 'latency=0.1'"):
        parse_tolerances(["latency=0.1"], BUILTIN)
    previous = tmp_path / "results.json"
    record = {"adapter": "a", "check": "latency", "status": PASSED, "value": 10.0}
    previous.write_text(json.dumps({"schema": 1, "harness_version": "0", "results": [record]}))
    grown = compare(CheckResult("a", "latency", PASSED, 12.0), Previous.load(previous), tolerances, spec)
    assert grown.status == FAILED and "latency grew from 10 to 12" in grown.message
    shrunk = compare(CheckResult("a", "latency", PASSED, 5.0), Previous.load(previous), tolerances, spec)
    assert shrunk.status == PASSED and shrunk.details["delta"] == -5.0


EXTRA_CHECK_CONFTEST = """
from pathlib import Path

from lora_harness.config.check_registry import CheckSpec


def pytest_lora_checks(config):
    folder = Path(__file__).parent / "extra_checks"
    return [CheckSpec("tensor_count", "test_tensor_count.py", folder=folder, higher_is_better=True, tolerance=0.0)]


def pytest_lora_check_result(result, adapter):
    if result.check == "tensor_count":
        result.details["amended_by"] = "conftest"
"""

EXTRA_CHECK_MODULE = """
from lora_harness.verdicts.results import verdict


def test_tensor_count(adapter, harness, record_check):
    def evaluate():
        applied = adapter.record["tensors_applied"]
        return verdict(adapter.name, "tensor_count", applied > 0, applied, 1, "no tensor applied", {})

    record_check(adapter, harness.run_check(adapter, "tensor_count", evaluate))
"""


def test_a_check_added_through_the_registry_alone_is_collected_ordered_compared_and_reported(pytester, write_lora):
    pytester.makeconftest(EXTRA_CHECK_CONFTEST)
    (pytester.path / "extra_checks").mkdir()
    (pytester.path / "extra_checks" / "test_tensor_count.py").write_text(EXTRA_CHECK_MODULE)
    adapter = write_lora("kohya", "good.safetensors")
    selected = ("-k", "tensor_count or param_budget or frozen_base")
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, *FAST, *selected, "--compare-tolerance", "tensor_count=0.5"
    )
    result.assert_outcomes(passed=3)
    folder = pytester.path / "lora-report"
    document = json.loads((folder / "results.json").read_text())
    # collected after the built-in checks, before frozen_base, which judges what they left in the base
    assert [r["check"] for r in document["results"]] == ["param_budget", "tensor_count", "frozen_base"]
    record = document["results"][1]
    assert record["status"] == "passed" and record["value"] == 64 and record["details"]["amended_by"] == "conftest"
    assert document["settings"]["compare_tolerances"]["tensor_count"] == 0.5
    assert document["run"]["not_finished"] == []
    html = (folder / "report.html").read_text()
    headers = [
        html.index(f"<th>{check.replace('_', BREAK)}</th>") for check in ("frozen_base", "param_budget", "tensor_count")
    ]
    assert headers == sorted(headers)  # the reports: the built-in checks in registry order, then the plugin's
    result.stdout.fnmatch_lines(
        ["*frozen_base*param_budget*tensor_count*verdict*", "good.safetensors*PASS*PASS*PASS*PASS*"]
    )

    (pytester.path / "conftest.py").unlink()  # the same option, without the registry entry, is a usage error
    refused = pytester.runpytest_inprocess("--adapter", adapter, *FAST, "--compare-tolerance", "tensor_count=0.5")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*CHECK in wiring, frozen_base, param_budget, pixel_diff, got 'tensor_count=0.5'*"])


def test_a_plugin_check_named_like_a_built_in_one_is_a_usage_error(pytester):
    pytester.makeconftest(
        """
        from lora_harness.config.check_registry import CheckSpec

        def pytest_lora_checks(config):
            return [CheckSpec("wiring", "test_elsewhere.py")]
        """
    )
    result = pytester.runpytest_inprocess("--adapter", "reference", *FAST)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*lora-harness: more than one CheckSpec named wiring*"])


def test_a_registry_lists_its_specs_in_the_order_given():
    first, second = CheckSpec("b", "test_b.py"), CheckSpec("a", "test_a.py", after_other_checks=True)
    registry = CheckRegistry((first, second, CheckSpec("c", "test_c.py")))
    assert registry.names == ("b", "a", "c") and registry["a"] is second
    assert [spec.name for spec in registry.in_collection_order()] == ["b", "c", "a"]
    with pytest.raises(KeyError, match="no check named 'z'"):
        registry["z"]
