"""ResultsTable: the run's records, gathered from test reports and written to `<report-dir>/results.json`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lora_harness import __version__, properties

SCHEMA = 1
ADAPTER_FIELDS = (
    "name", "path", "format", "family", "rank", "alpha", "scale",
    "tensors", "tensors_applied", "lora_params", "sha256", "metadata",
)


class ResultsTable:
    def __init__(self, config):
        self.config = config
        self.path = Path(config.report_dir) / "results.json"
        self.base = {"model": config.base_model, "family": None, "fingerprint": None, "unet_params": None}
        self.adapters: dict[str, dict] = {spec.name: {"name": spec.name} for spec in config.adapters}
        self.results: dict[tuple[str, str], dict] = {}
        self.controls = {"status": "not run", "message": "no render-based check of a user adapter ran yet", "details": {}}
        self.unet_forward_passes = 0
        self.expected: list[tuple[str, str]] = []  # (adapter, check) pairs collected
        self.run = {"status": "running", "exit_status": None}

    def expect(self, pairs) -> None:
        self.expected = list(pairs)
        self.write()

    def finish(self, exit_status: int) -> None:
        interrupted = exit_status in (2, 3)  # pytest's INTERRUPTED and INTERNAL_ERROR
        self.run = {"status": "interrupted" if interrupted else "complete", "exit_status": exit_status}
        self.write()

    def add_report(self, report) -> None:
        for name, value in report.user_properties:
            if name == properties.RESULT:
                self.results[(value["adapter"], value["check"])] = value
            elif name == properties.ADAPTER:
                self.adapters[value["name"]] = value
            elif name == properties.BASE:
                self.base = value
            elif name == properties.CONTROLS:
                self.controls = value
            elif name == properties.FORWARD_PASSES:
                self.unet_forward_passes += value
        if report.when == "teardown":
            self.write()

    def document(self) -> dict:
        return {
            "schema": SCHEMA,
            "harness_version": __version__,
            "base": self.base,
            "settings": self.config.settings(),
            "adapters": [{field: record.get(field) for field in ADAPTER_FIELDS} | _extra(record) for record in self.adapters.values()],
            "results": list(self.results.values()),
            "unet_forward_passes": self.unet_forward_passes,
            "controls": self.controls,
            "run": {**self.run, "not_finished": [{"adapter": a, "check": c} for a, c in self.expected if (a, c) not in self.results]},
        }

    def write(self) -> Path:
        """Atomically: a reader, or a run killed mid-write, never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".results-", suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(self.document(), out, indent=2, default=_plain)
        os.replace(temporary, self.path)
        return self.path


def _extra(record: dict) -> dict:
    return {key: record[key] for key in ("details", "error", "defects") if key in record}


def _plain(value):
    """JSON for what json does not know: numpy scalars, paths, tuples."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
