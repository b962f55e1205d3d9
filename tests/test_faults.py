"""Real faults: runs killed hard at seeded points, processes sharing one render cache, damaged cache entries, and a
report folder that cannot be written."""

import csv
import json
import multiprocessing
import os
import random
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lora_harness.rendering.render_cache import TEXT_KEY, CachedRender, RenderCache, RenderKey

NO_CACHE = ("-p", "no:cacheprovider")
FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
RENDERING = ("-k", "wiring or pixel_diff")  # renders base, adapted, scale 0 and the base again: every cache path
PROMPTS = 2  # the built-in prompts, one seed each
CSV_HEADER = ["adapter", "check", "status", "value", "threshold", "message", "duration_s"]
# LORA_KILL_RUNS=100 for a long run; the default (each point twice) keeps the test near a minute on a 2-core CPU.
KILL_RUNS = int(os.environ.get("LORA_KILL_RUNS", "10"))
POINTS = ("render", "results", "cache", "replace", "timer")


def cache_entries(folder: Path) -> list[Path]:
    """The entries a run would read: temp files of a write that never finished are named by no key."""
    return sorted(p for p in folder.glob("*/*.png") if not p.name.startswith("."))


def damaged_entries(folder: Path) -> list[str]:
    """Entries that are not whole: unreadable, or not what their own key says was written."""
    damaged = []
    for path in cache_entries(folder):
        try:
            with Image.open(path) as png:
                key = RenderKey(**json.loads(png.text[TEXT_KEY])["key"])
        except (OSError, SyntaxError, KeyError, ValueError) as error:
            damaged.append(f"{path.name}: {error!r}")
            continue
        if RenderCache(folder).get(key) is None:
            damaged.append(f"{path.name}: rejected on read")
    return damaged


class _WholePage(HTMLParser):
    def __init__(self, page: str):
        super().__init__()
        self.closed = False
        self.feed(page)
        self.close()

    def handle_endtag(self, tag):
        self.closed |= tag == "html"


def report_problems(report: Path) -> list[str]:
    """What a reader of the report folder would trip on; [] when every file is absent or whole."""
    problems = []
    if (report / "results.json").exists():
        document = json.loads((report / "results.json").read_text())  # raises on half a file: the test fails
        status = document["run"]["status"]
        if status not in ("running", "complete"):
            problems.append(f"results.json says {status!r}")
        if status == "complete" and document["run"]["not_finished"]:
            problems.append("results.json says complete with checks not finished")
    if (report / "results.csv").exists():
        with (report / "results.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))
        if rows[0] != CSV_HEADER or any(len(row) != len(CSV_HEADER) for row in rows):
            problems.append(f"results.csv is not whole: {rows[:3]}")
    if (report / "report.html").exists() and not _WholePage((report / "report.html").read_text()).closed:
        problems.append("report.html ends before </html>")
    for card in report.glob("release_cards/*/release_card.md"):
        if "## E: Export with metadata" not in card.read_text():
            problems.append(f"{card} ends before its last section")
    return problems


class ForkServer:
    """tests/fault_server.py: imports the libraries once, then forks a run per request and kills it as asked."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fault_server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def run(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def fork_server():
    server = ForkServer()
    yield server
    server.close()


def kill_point(run: int, rng: random.Random) -> dict:
    """Where run `run` dies; seeded, so a failure names a kill that happens again."""
    point = POINTS[run % len(POINTS)]
    if point == "render":
        return {"point": point, "nth": rng.randint(1, 2)}  # the base-again render alone makes 2 U-Net calls
    if point == "results":
        return {"point": point, "nth": rng.randint(1, 16), "fraction": rng.random()}
    if point == "cache":
        return {"point": point, "nth": rng.randint(1, 3), "writes": rng.randint(0, 6), "fraction": rng.random()}
    if point == "replace":
        return {"point": point, "nth": rng.randint(1, 16)}
    return {"point": point, "delay": rng.uniform(0.05, 1.5)}  # early enough to land inside a run on a fast machine


def test_runs_killed_hard_leave_a_valid_report_and_only_whole_cache_entries(fork_server, write_lora, tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    adapter = write_lora("kohya", "good.safetensors")
    rng = random.Random(18)
    tally, failures = Counter(), []
    for run in range(KILL_RUNS):
        point = kill_point(run, rng)
        # Two runs per prompt: the second meets whatever its killed predecessor left in the cache. A cache kill
        # needs renders to write: a prompt of its own.
        take = f"fresh {run}" if point["point"] == "cache" else run // 2
        prompts = folder / f"prompts-{run}.txt"
        prompts.write_text(f"a red cube on a wooden table, take {take}\n")
        args = ["--adapter", str(adapter), "--render-cache", "cache", "--prompts", str(prompts)]
        answer = fork_server.run(folder=str(folder), run=run, args=[*args, *FAST, *RENDERING, "-q"], **point)
        assert not answer["hung"], f"run {run} {point} hung: {(folder / f'run-{run}.log').read_text()[-3000:]}"
        tally["killed" if answer["killed"] else "finished first"] += 1
        tally[point["point"]] += answer["killed"]
        problems = report_problems(folder / "lora-report") + damaged_entries(folder / "cache")
        failures += [f"run {run} {point}: {problem}" for problem in problems]
    final = fork_server.run(folder=str(folder), run="final", args=[*args, *FAST, *RENDERING, "-q"], point="none")
    document = json.loads((folder / "lora-report" / "results.json").read_text())
    strays = len(list((folder / "cache").glob("*/.*"))) + len(list((folder / "lora-report").rglob(".*")))
    print(
        f"\nSIGKILL: {KILL_RUNS} runs, {tally['killed']} killed ({dict((p, tally[p]) for p in POINTS)}), "
        f"{tally['finished first']} finished before their kill point, {len(failures)} failures, "
        f"{len(cache_entries(folder / 'cache'))} cache entries, {strays} stray temp files, "
        f"final run: {document['render_cache']}"
    )
    assert failures == []
    assert final == {"killed": False, "exit": 0, "hung": False}, (folder / "run-final.log").read_text()[-3000:]
    assert document["run"]["status"] == "complete" and {r["status"] for r in document["results"]} == {"passed"}
    assert document["render_cache"]["hits"] + document["render_cache"]["written"] == 3  # each render read whole or made
    if KILL_RUNS >= len(POINTS):
        assert all(tally[point] for point in POINTS), tally  # each kind of kill really happened


def _damage(entries: list[Path]) -> None:
    """Three ways an entry goes bad: cut short, not a PNG, and whole but holding other pixels."""
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    entries[1].write_bytes(b"\0" * 64)
    with Image.open(entries[2]) as png:
        info, pixels = PngInfo(), 255 - np.asarray(png.convert("RGB"))
        info.add_text(TEXT_KEY, png.text[TEXT_KEY])
    Image.fromarray(pixels).save(entries[2], pnginfo=info)


def test_the_next_run_renders_damaged_cache_entries_again(pytester, write_lora):
    adapter = write_lora("kohya", "good.safetensors")
    args = ("--adapter", adapter, "--render-cache", "cache", *FAST, *RENDERING)
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=2)
    first = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    entries = cache_entries(pytester.path / "cache")
    assert len(entries) == first["render_cache"]["written"] >= 3
    _damage(entries)
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=2)
    second = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    assert second["render_cache"] == {**first["render_cache"], "hits": len(entries) - 3, "written": 3}
    assert damaged_entries(pytester.path / "cache") == []  # rewritten whole
    values = {r["check"]: r["value"] for r in first["results"]}  # the inverted entry, reused, would move pixel_diff
    assert {r["check"]: r["value"] for r in second["results"]} == pytest.approx(values, rel=0.01)


def _hammer(folder: str, writer: int, rounds: int) -> int:
    """Write and read the same few keys as fast as possible; return how many reads found a damaged entry."""
    cache, damaged = RenderCache(Path(folder)), 0
    keys = [RenderKey("f" * 16, None, 1.0, f"prompt {i}", 0, 4, 7.5, 64, "DDIM:{}", "cpu", "float32") for i in range(4)]
    for round_ in range(rounds):
        key = keys[round_ % len(keys)]
        cache.put(key, CachedRender(np.full((64, 64, 3), writer, np.uint8), True, [f"writer {writer}"]))
        for other in keys:
            written = cache._path(other).exists()  # entries are never removed: it is there for the read too
            hit = cache.get(other)
            damaged += written and hit is None
            # A read sees one writer's whole entry: its pixels and its facts agree.
            damaged += hit is not None and not (hit.image == int(hit.layers_run[0].split()[1])).all()
    return damaged


def test_processes_writing_one_render_cache_at_once_leave_only_whole_entries(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        damaged = pool.starmap(_hammer, [(str(tmp_path), writer, 150) for writer in range(4)])
    assert damaged == [0, 0, 0, 0]
    assert len(cache_entries(tmp_path)) == 4 and damaged_entries(tmp_path) == []
    assert list(tmp_path.glob("*/.*")) == []  # every temp file was renamed into place


def test_xdist_workers_sharing_the_render_cache_leave_whole_entries_and_a_rerun_hits_them(pytester, write_lora):
    adapters = [write_lora("kohya", "a.safetensors"), write_lora("peft-file", "b.safetensors")]
    args = (*[a for path in adapters for a in ("--adapter", path)], "--render-cache", "cache", *FAST, *RENDERING)
    parallel = pytester.runpytest_subprocess(*args, "-n", "2", "--dist", "loadgroup")
    parallel.assert_outcomes(passed=4)
    first = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    assert damaged_entries(pytester.path / "cache") == []
    renders = PROMPTS * (1 + 2 * 2)  # the base (both workers wrote its entries), then adapted and scale 0 per adapter
    assert len(cache_entries(pytester.path / "cache")) == renders
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=4)
    second = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    assert second["render_cache"]["written"] == 0 and second["render_cache"]["hits"] == renders
    assert {(r["adapter"], r["check"]): r["status"] for r in second["results"]} == {
        (r["adapter"], r["check"]): r["status"] for r in first["results"]
    }


@pytest.mark.parametrize("report_dir", ["somefile/lora-report", "somefile"])
def test_a_report_folder_under_or_in_place_of_a_file_is_a_usage_error_before_any_model_loads(pytester, report_dir):
    """Tests run as root here, whom chmod does not stop: a regular file in the way stands for a folder that
    cannot be written."""
    (pytester.path / "somefile").write_text("not a folder")
    result = pytester.runpytest_inprocess("--adapter", "reference", "--report-dir", report_dir, *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--report-dir {report_dir}: {pytester.path / 'somefile'} is a file, not a folder*"])
    assert "loading base model" not in result.stdout.str()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the file-in-the-way test stands in")
def test_a_read_only_report_folder_is_a_usage_error(pytester):
    (pytester.path / "locked").mkdir(mode=0o500)
    result = pytester.runpytest_inprocess("--adapter", "reference", "--report-dir", "locked/report", *NO_CACHE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--report-dir locked/report: cannot write there (Permission denied*"])
