"""The short adapter x check table printed at the end of a run."""

from __future__ import annotations

from lora_harness.config.check_registry import report_order
from lora_harness.inert_text import visible
from lora_harness.verdicts.results import adapter_verdict

SYMBOLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}


def summary_lines(table) -> list[str]:
    import pandas as pd

    lines = []
    if table.results:
        frame = pd.DataFrame(list(table.results.values()))
        frame["adapter"] = frame["adapter"].map(visible)
        grid = frame.pivot_table(index="adapter", columns="check", values="status", aggfunc="last")
        grid = grid.reindex(columns=report_order(frame["check"]))
        grid["verdict"] = frame.groupby("adapter")["status"].agg(adapter_verdict)  # as report.html and the cards say
        lines += grid.fillna("-").map(lambda status: SYMBOLS.get(status, status)).to_string().splitlines()
    else:
        lines.append("no check ran")
    controls = table.controls
    message = f" - {visible(controls['message'])}" if controls.get("message") else ""
    lines.append(f"controls (reference overfit vs untrained): {controls['status']}{message}")
    lines.append(f"results: {visible(table.path)}")
    lines.append(f"report:  {visible(table.path.parent / 'report.html')}")  # what a reviewer opens next
    return lines
