"""`--shard K/N` splits a run's adapters over N runs; `python -m lora_harness merge` joins their reports into one."""

import json
import re
import shutil
import sys
from collections import Counter
from xml.etree import ElementTree

import pytest

from lora_harness.__main__ import main
from lora_harness.config.shard import Shard, parse_shard

FAST = ("--reference-steps", "0", "--render-steps", "2", "--render-seeds", "1")
WITHOUT_CLIP_CHECKS = ("-k", "not clip_heldout and not mode_collapse")  # the self-test CLIP's figures mean nothing


def run(pytester, *args):
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *map(str, args))


def document(folder):
    return json.loads((folder / "results.json").read_text())


def verdicts(document):
    return {(r["adapter"], r["check"]): (r["status"], r["value"]) for r in document["results"]}


def ran(result) -> int:
    outcomes = result.parseoutcomes()
    return sum(outcomes.get(kind, 0) for kind in ("passed", "failed", "skipped", "errors"))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shares_are_disjoint_cover_the_list_and_balance(count):
    adapters = [f"adapter-{i}" for i in range(11)]
    shares = [Shard(index, count).select(adapters) for index in range(1, count + 1)]
    assert Counter(a for share in shares for a in share) == Counter(adapters)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert shares == [Shard(index, count).select(adapters) for index in range(1, count + 1)]  # deterministic


def test_shards_check_every_adapter_once_and_merge_into_the_unsharded_run(pytester, write_lora):
    paths = [
        write_lora("kohya", "a.safetensors"),
        write_lora("peft", "b"),
        write_lora("peft-file", "zero-b.safetensors", zero_b=True),  # fails its checks: not every verdict is a pass
        write_lora("kohya", "d.safetensors", rank=8),
    ]
    adapters = [a for path in paths for a in ("--adapter", path)]
    whole = run(pytester, *adapters, *FAST, *WITHOUT_CLIP_CHECKS, "--report-dir", "whole")
    assert whole.ret == pytest.ExitCode.TESTS_FAILED
    expected = document(pytester.path / "whole")
    collected = ran(whole) + whole.parseoutcomes()["deselected"]
    per_adapter = ran(whole) // len(paths)
    for count in (2, 3):
        folders, held = [], Counter()
        for index in range(1, count + 1):
            folder = pytester.path / f"shard-{index}-of-{count}"
            shard_args = ("--shard", f"{index}/{count}", "--report-dir", folder)
            result = run(pytester, *adapters, *FAST, *WITHOUT_CLIP_CHECKS, *shard_args)
            shard = document(folder)
            assert shard["settings"]["shard"] == f"{index}/{count}"
            names = {r["adapter"] for r in shard["results"]}
            assert names == {a["name"] for a in shard["adapters"]}  # an adapter's checks stay in one shard
            assert ran(result) == per_adapter * len(names)
            assert ran(result) + result.parseoutcomes()["deselected"] == collected  # the others' checks are deselected
            held.update(names)
            folders.append(folder)
        assert held == Counter(a["name"] for a in expected["adapters"])  # every adapter exactly once
        out = pytester.path / f"merged-{count}"
        merged_run = pytester.run(sys.executable, "-m", "lora_harness", "merge", *folders, "--report-dir", out)
        assert merged_run.ret == 1  # like the unsharded run
        merged = document(out)
        assert verdicts(merged) == verdicts(expected)
        assert [a["name"] for a in merged["adapters"]] == [a["name"] for a in expected["adapters"]]
        assert [s["shard"] for s in merged["shards"]] == [f"{index}/{count}" for index in range(1, count + 1)]
        assert merged["settings"]["shard"] is None and merged["base"] == expected["base"]
        junit = ElementTree.parse(out / "junit.xml")  # well-formed, one test case per adapter x check
        cases = {(case.get("classname"), case.get("name")): case for case in junit.iter("testcase")}
        assert set(cases) == set(verdicts(expected))
        assert (
            {pair for pair, case in cases.items() if case.find("failure") is not None}
            == {pair for pair, (status, _) in verdicts(expected).items() if status == "failed"}
            != set()
        )
        assert (out / "results.csv").read_text().count("\n") == len(expected["results"]) + 1
        pictures = (pytester.path / "whole" / "report.html").read_text().count("data:image/png")
        assert (out / "report.html").read_text().count("data:image/png") == pictures  # each shard's pictures found


@pytest.fixture
def shard_runs(pytester, write_lora):
    """run(name, *options) -> the folder of one quick run (param_budget only) over the same two adapters."""
    # Inside the run's folder, or pytest takes the files' common ancestor as its rootdir and never sees the ini.
    paths = [shutil.copy(write_lora("kohya", f"{name}.safetensors"), pytester.path) for name in ("a", "b")]
    adapters = [a for path in paths for a in ("--adapter", path)]

    def shard(name, *options):
        run(pytester, *adapters, "--reference-steps", "0", "-k", "param_budget", "--report-dir", name, *options)
        return pytester.path / name

    return shard


def merge(capsys, *folders):
    """(exit code, stderr) of `lora-harness merge FOLDERS --report-dir <first folder>-merged`."""
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main(["merge", *map(str, folders), "--report-dir", f"{folders[0]}-merged"]))
    return exit_info.value.code, capsys.readouterr().err


def test_shards_of_different_runs_are_refused_naming_what_differs(pytester, shard_runs, capsys):
    first = shard_runs("first", "--shard", "1/2")
    pytester.makeini("[pytest]\nlora_shard = 2/2\n")  # the ini twin
    second = shard_runs("second")
    other_floor = shard_runs("floor", "--shard", "2/2", "--diff-floor", "0.4")
    other_base = shard_runs("sdxl", "--shard", "2/2", "--base-model", "tiny-sdxl")
    assert document(second)["settings"]["shard"] == "2/2"
    assert merge(capsys, first, second) == (0, "")  # the control: these two are one run

    code, message = merge(capsys, first, other_floor)
    assert code == 2 and "setting diff_floor 0.5 in" in message and "vs 0.4 in" in message
    assert "first (shard 1/2)" in message and "floor (shard 2/2)" in message
    code, message = merge(capsys, first, other_base)
    assert code == 2 and "base model 'tiny' in" in message and "vs 'tiny-sdxl' in" in message
    assert "base fingerprint" in message
    newer = pytester.path / "newer"
    shutil.copytree(second, newer)
    record = document(newer) | {"harness_version": "9.9.9"}
    (newer / "results.json").write_text(json.dumps(record))
    code, message = merge(capsys, first, newer)
    assert code == 2 and "harness version '0.1.0' in" in message and "vs '9.9.9' in" in message
    code, message = merge(capsys, first, first)
    assert code == 2 and "adapter a.safetensors is in both" in message and "pass each shard's folder once" in message
    code, message = merge(capsys, first)
    assert code == 2 and "missing 2/2 (given: 1/2)" in message
    code, message = merge(capsys, first, pytester.path / "nowhere")
    assert code == 2 and "nowhere: no results.json" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(first), str(second), "--report-dir", str(second)])
    assert exit_info.value.code == 2 and "is one of the shards' folders" in capsys.readouterr().err


@pytest.mark.parametrize(
    "value, message",
    [
        ("0/2", "K between 1 and N"),
        ("3/2", "K between 1 and N"),
        ("2", "must be K/N"),
        ("one/two", "must be K/N"),
        ("-1/2", "must be K/N"),
        ("1/3", "3 shards of 2 adapter(s) leave some shards nothing to check; split into at most 2 shards"),
    ],
)
def test_bad_shard_values_are_usage_errors(pytester, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_shard(value, 2)
    result = run(pytester, "--adapter", "x.safetensors", "--adapter", "y.safetensors", f"--shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*lora-harness: --shard*{message}*"])
    assert "loading base model" not in result.stdout.str()
