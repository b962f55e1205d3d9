"""ResultsTable: the run's records, gathered from test reports and written to `<report-dir>/results.json`."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from html import escape
from pathlib import Path

from lora_harness import __version__
from lora_harness.bases.single_file import inspect_single_file
from lora_harness.inert_text import visible
from lora_harness.run import report_records

SCHEMA = 1
ADAPTER_FIELDS = (
    "name",
    "path",
    "format",
    "kind",
    "family",
    "rank",
    "alpha",
    "scale",
    "tensors",
    "tensors_applied",
    "lora_params",
    "sha256",
    "metadata",
)


class ResultsTable:
    def __init__(self, config, previous=None):
        self.config = config
        self.previous = previous
        self.path = Path(config.report_dir) / "results.json"
        self.base = {
            "model": config.base_model,
            "family": None,
            "fingerprint": None,
            "unet_params": None,
            "denoiser_params": None,
        }
        # A single-file base as its header was read when the options were resolved: known before any weight loads.
        single_file = config.base_path is not None and config.base_path.is_file()
        self.base_single_file = (
            inspect_single_file(config.base_model, config.base_path).record() if single_file else None
        )
        self.adapters: dict[str, dict] = {spec.name: {"name": spec.name} for spec in config.checked_adapters}
        self.results: dict[tuple[str, str], dict] = {}
        self.controls = {
            "status": "not run",
            "message": "no render-based check of a user adapter ran yet",
            "details": {},
        }
        self.unet_forward_passes = 0
        self.render_cache = {
            "folder": str(config.render_cache) if config.render_cache else None,
            "hits": 0,
            "written": 0,
        }
        self.costs: dict[str, dict] = {}  # adapter -> wall seconds, U-Net calls, cached renders used
        self.expected: list[tuple[str, str]] = []  # (adapter, check) pairs collected
        self.run = {"status": "running", "exit_status": None}
        self.environment = environment()

    def expect(self, pairs) -> None:
        self.expected = list(pairs)
        self.write()

    def finish(self, exit_status: int) -> None:
        interrupted = exit_status in (2, 3)  # pytest's INTERRUPTED and INTERNAL_ERROR
        self.run = {"status": "interrupted" if interrupted else "complete", "exit_status": exit_status}
        self.write()

    def add_report(self, report) -> None:
        for kind, value in report_records.records(report):
            if kind == report_records.RESULT:
                self.results[(value["adapter"], value["check"])] = value
            elif kind == report_records.ADAPTER:
                self.adapters[value["name"]] = value
            elif kind == report_records.BASE:
                self.base = value
            elif kind == report_records.CONTROLS:
                self.controls = value
            elif kind == report_records.COSTS:
                self._add_costs(value, report.duration)
        if report.when == "teardown":
            self.write()

    def _add_costs(self, costs: dict, seconds: float) -> None:
        self.unet_forward_passes += costs["unet_forward_passes"]
        self.render_cache["hits"] += costs["cache_hits"]
        self.render_cache["written"] += costs["cache_written"]
        if costs["adapter"] is not None:
            cost = self.costs.setdefault(
                costs["adapter"], {"wall_s": 0.0, "unet_forward_passes": 0, "cached_renders": 0}
            )
            cost["wall_s"] = round(cost["wall_s"] + seconds, 3)
            cost["unet_forward_passes"] += costs["unet_forward_passes"]
            cost["cached_renders"] += costs["cache_hits"]

    def document(self) -> dict:
        return {
            "schema": SCHEMA,
            "harness_version": __version__,
            "base": self.base,
            "settings": self.config.settings() | {"base_single_file": self.base_single_file},
            "adapters": [
                {field: record.get(field) for field in ADAPTER_FIELDS}
                | {"cost": self.costs.get(record["name"])}
                | _extra(record)
                for record in self.adapters.values()
            ],
            "results": list(self.results.values()),
            "unet_forward_passes": self.unet_forward_passes,
            "render_cache": self.render_cache,
            "controls": self.controls,
            "environment": self.environment,
            "previous": {"path": str(self.previous.path), "harness_version": self.previous.harness_version}
            if self.previous
            else None,
            "run": {
                **self.run,
                "not_finished": [{"adapter": a, "check": c} for a, c in self.expected if (a, c) not in self.results],
            },
        }

    def write(self) -> Path:
        """results.json, results.csv and report.html, each replaced atomically as the run goes."""
        return self.write_document(self.document(), self.path.parent)

    @staticmethod
    def write_document(document: dict, folder: Path) -> Path:
        """`document` as results.json, results.csv, release cards and report.html in `folder`, each replaced
        atomically: a run's table and `lora_harness merge` write the same files."""
        from .html import render_html
        from .release_card import release_card

        folder.mkdir(parents=True, exist_ok=True)
        write_atomically(folder / "results.json", json.dumps(document, indent=2, default=_plain))
        write_atomically(folder / "results.csv", results_frame(document).to_csv(index=False))
        for adapter in document["adapters"]:
            card = folder / "release_cards" / adapter["name"] / "release_card.md"
            card.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(card, release_card(adapter, document))
        try:
            html = render_html(json.loads(json.dumps(document, default=_plain)), folder)
        except Exception as error:  # noqa: BLE001 - the report must never take the run (or results.json) down
            warnings.warn(f"lora-harness could not render report.html: {error!r}", stacklevel=1)
            html = f"<!doctype html><title>report failed</title><p>report.html could not be rendered: {escape(repr(error))}; see results.json"
        write_atomically(folder / "report.html", html)
        return folder / "results.json"


def results_frame(document: dict):
    """One row per adapter x check, each text cell safe to open in a spreadsheet."""
    import pandas as pd

    columns = ["adapter", "check", "status", "value", "threshold", "message", "duration_s"]
    rows = [{c: inert_cell(r.get(c)) for c in columns} for r in document["results"]]
    return pd.DataFrame(rows, columns=columns)


FORMULA_STARTS = ("=", "+", "-", "@")  # and tab and CR, which `visible` has already written as escapes


def inert_cell(value):
    """Text cells carry file names and keys from strangers: control characters are written as escapes (a bare CR
    splits a row), and a cell a spreadsheet would run as a formula gets a leading `'` (OWASP's CSV-injection advice).
    Numbers stay numbers, negative ones included."""
    if not isinstance(value, str):
        return value
    value = visible(value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_atomically(path: Path, text: str) -> None:
    """Temp file + rename: a reader, or a run killed mid-write, never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(temporary, path)


def environment() -> dict:
    """Versions and machine facts a reviewer needs to trust or reproduce the run."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    facts = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "diffusers", "peft", "transformers", "safetensors", "pytest"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            facts[package] = "not installed"
    return facts


def _extra(record: dict) -> dict:
    return {key: record[key] for key in ("details", "error", "defects") if key in record}


def _plain(value):
    """JSON for what json does not know: numpy scalars, paths, tuples."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
