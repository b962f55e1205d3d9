"""`python -m lora_harness merge DIR... --report-dir OUT`: the shards of one run (`--shard K/N`) as one report.

Shards make one run when one harness version made them on one base with the same settings (but for --shard and
where each wrote), each adapter is in one shard, and all N shards are there. Anything else is refused, naming what
differs: a verdict merged from runs that checked different things would be a false one.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from lora_harness.config.config import adapter_specs
from lora_harness.config.shard import Shard, parse_shard
from lora_harness.inert_text import visible
from lora_harness.run import report_records
from lora_harness.verdicts.results import ERROR, FAILED, PASSED, SKIPPED

from .results_table import SCHEMA, ResultsTable, write_atomically

# Where a shard wrote, not what it checked: these differ between the shards of one run.
PER_SHARD_SETTINGS = ("shard", "report_dir", "render_cache")
JUNIT_FILE = "junit.xml"


class MergeError(ValueError):
    """Folders that do not hold the shards of one run; the command line reports it as a usage error."""


@dataclass(frozen=True)
class ShardRun:
    folder: Path
    document: dict
    shard: Shard

    def __str__(self) -> str:
        return f"{self.folder} (shard {self.shard})"


def load_shard(folder: Path) -> ShardRun:
    path = folder / "results.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MergeError(f"{folder}: no results.json; pass the --report-dir of each shard's run") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MergeError(f"{path}: cannot be read as JSON ({error}); pass the folder a shard's run wrote") from None
    settings = document.get("settings") if isinstance(document, dict) else None
    if not isinstance(settings, dict) or document.get("schema") != SCHEMA:
        raise MergeError(f"{path}: not a schema-{SCHEMA} results.json of lora-harness; pass the folder a run wrote")
    try:  # a run made without --shard is the whole run: shard 1/1
        shard = parse_shard(settings.get("shard") or "1/1", max(1, len(settings.get("adapters") or ())))
    except ValueError as error:
        raise MergeError(f"{path}: {error}") from None
    return ShardRun(folder, document, shard)


def check_one_run(runs: list[ShardRun]) -> None:
    """Same version, base, settings and shard count; no adapter twice; no shard missing."""
    first = runs[0]
    differences = []
    for run in runs[1:]:
        pairs = [
            ("harness version", first.document.get("harness_version"), run.document.get("harness_version")),
            ("shard count", first.shard.count, run.shard.count),
        ]
        for key in ("model", "fingerprint"):
            mine, theirs = (first.document.get("base") or {}).get(key), (run.document.get("base") or {}).get(key)
            if key != "fingerprint" or None not in (mine, theirs):  # a shard that never loaded the base has none
                pairs.append((f"base {key}", mine, theirs))
        settings, other = first.document["settings"], run.document["settings"]
        names = sorted((settings.keys() | other.keys()) - set(PER_SHARD_SETTINGS))
        pairs += [(f"setting {name}", settings.get(name), other.get(name)) for name in names]
        differences += [
            f"{what} {mine!r} in {first} vs {theirs!r} in {run}" for what, mine, theirs in pairs if mine != theirs
        ]
    if differences:
        raise MergeError(
            "these folders are not shards of one run: "
            + "; ".join(differences)
            + "; make every shard with the same lora-harness version, base and options (only --shard, --report-dir and"
            " --render-cache may differ)"
        )
    holder: dict[str, ShardRun] = {}
    for run in runs:
        for adapter in run.document.get("adapters") or ():
            if adapter["name"] in holder:
                raise MergeError(
                    f"adapter {adapter['name']} is in both {holder[adapter['name']]} and {run}; "
                    "pass each shard's folder once"
                )
            holder[adapter["name"]] = run
    count = first.shard.count
    missing = sorted(set(range(1, count + 1)) - {run.shard.index for run in runs})
    if missing:
        given = ", ".join(str(run.shard) for run in runs)
        raise MergeError(
            f"not every shard is here: missing {', '.join(f'{index}/{count}' for index in missing)} (given: {given}); "
            f"pass the --report-dir of every shard, or run the missing ones"
        )


def picture_folder(shard: Shard) -> str:
    """Where, under the merged report, a shard's pictures go: every shard saves the base's under the same names."""
    return f"shards/{shard.index}-of-{shard.count}"


def merged_document(runs: list[ShardRun], out: Path) -> dict:
    """One results.json of the shards (whose picture paths it points into their `picture_folder`)."""
    runs = sorted(runs, key=lambda run: run.shard.index)
    first = runs[0].document
    order = [spec.name for spec in adapter_specs(first["settings"].get("adapters") or [])]
    position = {name: index for index, name in enumerate(order)}
    adapters = [a for run in runs for a in run.document["adapters"]]
    adapters.sort(key=lambda a: position.get(a["name"], len(order)))
    results = []
    for run in runs:
        for result in run.document.get("results") or ():
            for picture in (result.get("details") or {}).get("pictures", []):
                for kind in ("base", "adapted", "diff"):
                    picture[kind] = f"{picture_folder(run.shard)}/{picture[kind]}"
            results.append(result)
    results.sort(key=lambda r: position.get(r["adapter"], len(order)))  # stable: each adapter's checks keep their order
    not_finished = [pair for run in runs for pair in (run.document.get("run") or {}).get("not_finished") or ()]
    shard_runs = [run.document.get("run") or {} for run in runs]
    passed = (
        all(r["status"] in (PASSED, SKIPPED) for r in results)
        and not not_finished
        and all(r.get("status") == "complete" and r.get("exit_status") == 0 for r in shard_runs)
    )
    statuses = {r.get("status") for r in shard_runs}
    return {
        "schema": SCHEMA,
        "harness_version": first["harness_version"],
        "base": next((r.document["base"] for r in runs if r.document["base"].get("fingerprint")), first["base"]),
        "settings": {**first["settings"], "shard": None, "report_dir": str(out)},
        "adapters": adapters,
        "results": results,
        "unet_forward_passes": sum(run.document.get("unet_forward_passes") or 0 for run in runs),
        "render_cache": {
            "folder": (first.get("render_cache") or {}).get("folder"),
            "hits": sum((run.document.get("render_cache") or {}).get("hits") or 0 for run in runs),
            "written": sum((run.document.get("render_cache") or {}).get("written") or 0 for run in runs),
        },
        "controls": _controls(runs),
        "environment": first.get("environment"),
        "previous": first.get("previous"),
        "run": {
            "status": next((s for s in ("interrupted", "running") if s in statuses), "complete"),
            "exit_status": 0 if passed else 1,  # the merge's own: what one unsharded run would have exited with
            "not_finished": not_finished,
        },
        "shards": [
            {
                "shard": str(run.shard),
                "folder": str(run.folder),
                "report_dir": run.document["settings"].get("report_dir"),
                "render_cache": run.document["settings"].get("render_cache"),
                "run": run.document.get("run"),
                "controls": {key: (run.document.get("controls") or {}).get(key) for key in ("status", "message")},
                "environment": run.document.get("environment"),
            }
            for run in runs
        ],
    }


def _controls(runs: list[ShardRun]) -> dict:
    """Each shard ran its own controls for its own adapters: one that failed makes the merged controls fail."""
    controls = [(run, run.document.get("controls") or {}) for run in runs]
    for status in (FAILED, PASSED):
        deciding = [(run, c) for run, c in controls if c.get("status") == status]
        if deciding:
            message = "; ".join(f"shard {run.shard}: {c.get('message')}" for run, c in deciding if c.get("message"))
            return {"status": status, "message": message, "details": deciding[0][1].get("details") or {}}
    return controls[0][1]


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")  # adapter names come from strangers


def _xml_text(value) -> str:
    return _NOT_XML.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))


def junit_xml(document: dict) -> str:
    """One test case per adapter x check (classname: the adapter, name: the check), with the run's properties."""
    results = document["results"]
    unfinished = document["run"]["not_finished"]
    counts = Counter(r["status"] for r in results)
    suites = ElementTree.Element("testsuites", name="lora-harness")
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name="lora-harness",
        tests=str(len(results) + len(unfinished)),
        failures=str(counts[FAILED]),
        errors=str(counts[ERROR] + len(unfinished)),
        skipped=str(counts[SKIPPED]),
        time=f"{sum(r.get('duration_s') or 0 for r in results):.3f}",
    )
    for result in results:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=_xml_text(result["adapter"]),
            name=result["check"],
            time=f"{result.get('duration_s') or 0:.3f}",
        )
        properties = ElementTree.SubElement(case, "properties")
        for name, value in report_records.junit_properties(result):
            ElementTree.SubElement(properties, "property", name=name, value=_xml_text(value))
        outcome = {FAILED: "failure", ERROR: "error", SKIPPED: "skipped"}.get(result["status"])
        if outcome:
            ElementTree.SubElement(case, outcome, message=_xml_text(result["message"]))
    for pair in unfinished:
        case = ElementTree.SubElement(suite, "testcase", classname=_xml_text(pair["adapter"]), name=pair["check"])
        ElementTree.SubElement(case, "error", message="not finished: its shard's run stopped before this check")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"


def merge_shards(folders: list[Path], out: Path) -> int:
    """Write the merged report into `out`; 0 when every check passed (or was skipped, saying why), else 1."""
    out = out.expanduser().resolve()
    folders = [folder.expanduser().resolve() for folder in folders]
    if out in folders:
        raise MergeError(f"--report-dir {out} is one of the shards' folders; merge into a folder of its own")
    runs = [load_shard(folder) for folder in folders]
    check_one_run(runs)
    for run in runs:
        if (run.folder / "images").is_dir():
            shutil.copytree(run.folder / "images", out / picture_folder(run.shard) / "images", dirs_exist_ok=True)
    document = merged_document(runs, out)
    path = ResultsTable.write_document(document, out)
    write_atomically(out / JUNIT_FILE, junit_xml(document))
    counts = Counter(r["status"] for r in document["results"])
    print(
        f"lora-harness merge: {len(runs)} shards, {len(document['adapters'])} adapters, "
        + ", ".join(f"{counts[s]} {s}" for s in (PASSED, FAILED, ERROR, SKIPPED) if counts[s])
    )
    for result in document["results"]:
        if result["status"] in (FAILED, ERROR):
            print(visible(f"  {result['adapter']} {result['check']} {result['status']}: {result['message']}"))
    if document["run"]["not_finished"]:
        print(f"  not finished: {len(document['run']['not_finished'])} checks (listed in results.json)")
    print(f"results: {path}, {out / 'results.csv'}, {out / JUNIT_FILE}, {out / 'report.html'}")
    return document["run"]["exit_status"]
