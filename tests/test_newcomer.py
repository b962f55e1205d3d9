"""What a new user meets first: the README's main job with nothing but the declared dependencies, the wheel that
`pip install` builds, and a good adapter on the embedded default passing with default settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.expectations import CHECKS, expected_status

REPO = Path(__file__).resolve().parents[1]
# The `[test]` extra's packages: nothing a run of the plugin loads may import one.
TEST_ONLY = ("hypothesis", "xdist", "pytest_html", "playwright", "junitparser")
MECHANICAL = ("wiring", "frozen_base", "param_budget", "pixel_diff")


@pytest.mark.parametrize("where", ["repository root", "empty folder"])
def test_the_main_job_runs_without_any_test_only_package(tmp_path, where):
    """`pytest --adapter reference` as the README's set-up leaves it: the test-only packages made unimportable and
    pytest's plugin autoload off, so only the harness and its declared dependencies are there. From the repository
    root pytest loads the repo's conftest files on the check modules' path, as it does for an editable install."""
    blocked = tmp_path / "blocked"
    for name in TEST_ONLY:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ModuleNotFoundError('{name} is a test-only package')\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(blocked), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    report = tmp_path / "report"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "lora_harness.plugin",
        "--adapter",
        "reference",
        "--report-dir",
        str(report),
        "--no-render-cache",
    ]
    run = subprocess.run(
        command, cwd=REPO if where == "repository root" else empty, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    document = json.loads((report / "results.json").read_text())
    statuses = {r["check"]: r["status"] for r in document["results"] if r["adapter"] == "reference"}
    assert {check: statuses[check] for check in MECHANICAL} == dict.fromkeys(MECHANICAL, "passed")
    assert document["run"]["status"] == "complete" and document["controls"]["status"] == "passed"
    assert f"report:  {report / 'report.html'}" in run.stdout
    assert "PytestUnknownMarkWarning" not in run.stdout  # the xdist mark is added only where xdist runs


def test_the_wheel_holds_the_plugin_and_nothing_of_the_tests(tmp_path):
    """What `pip install .` installs: every check module and template, no test file, no repo conftest."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("lora_harness-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    checks = {f"lora_harness/checks/{path.name}" for path in (REPO / "checks").glob("test_*.py")}
    templates = {f"lora_harness/reports/templates/{path.name}" for path in (REPO / "reports" / "templates").iterdir()}
    assert checks and checks <= names and templates and templates <= names
    configs = {
        f"lora_harness/{p.relative_to(REPO / 'harness')}"
        for p in (REPO / "harness" / "bases" / "base_configs").rglob("*.json")
    }
    assert configs and configs <= names  # the single-file bases' diffusers configs
    assert "lora_harness/plugin.py" in names
    assert not [name for name in names if name.startswith("tests/") or name.endswith("conftest.py")]
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "lora_harness = lora_harness.plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_good_adapter_on_the_default_base_exits_0(pytester, write_lora):
    """`pytest --adapter my_lora.safetensors --reference-steps 0`, nothing else: every check that has a meaning
    passes, the CLIP checks report the self-test CLIP's figures without gating, and the paths to open are printed."""
    result = pytester.runpytest_inprocess(
        "--adapter", write_lora("kohya", "my_lora.safetensors"), "--reference-steps", "0"
    )
    assert result.ret == pytest.ExitCode.OK
    records = {
        r["check"]: r for r in json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    }
    assert {check: records[check]["status"] for check in CHECKS} == {check: expected_status(check) for check in CHECKS}
    assert all(
        "no verdict: pass --clip-model ARCH:PATH" in records[check]["message"]
        for check in ("clip_heldout", "mode_collapse")
    )
    result.stdout.fnmatch_lines(["results: */lora-report/results.json", "report:  */lora-report/report.html"])
