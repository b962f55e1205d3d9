"""The short adapter x check table printed at the end of a run."""

from __future__ import annotations

import pandas as pd

from lora_harness.results import CHECK_ORDER

SYMBOLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}


def summary_lines(table) -> list[str]:
    lines = []
    if table.results:
        frame = pd.DataFrame(list(table.results.values()))
        grid = frame.pivot_table(index="adapter", columns="check", values="status", aggfunc="last")
        grid = grid.reindex(columns=[c for c in CHECK_ORDER if c in grid] + [c for c in grid if c not in CHECK_ORDER])
        lines += grid.fillna("-").map(lambda status: SYMBOLS.get(status, status)).to_string().splitlines()
    else:
        lines.append("no check ran")
    controls = table.controls
    lines.append(f"controls (reference overfit vs untrained): {controls['status']}" + (f" - {controls['message']}" if controls.get("message") else ""))
    lines.append(f"results: {table.path}")
    return lines
