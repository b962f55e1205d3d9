"""The short adapter x check table printed at the end of a run, and `visible` for any text a file brought."""

from __future__ import annotations

import unicodedata

from lora_harness.config.check_registry import report_order
from lora_harness.verdicts.results import adapter_verdict

SYMBOLS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "skipped": "skip"}
# Bidirectional overrides and isolates reorder what a terminal shows ("Trojan Source"), as escapes move the cursor.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text) -> str:
    """`text` with every control character (ESC, CR, newline, C1, bidi) written as its escape, e.g. `\\x1b`: file names,
    keys and metadata come from strangers, and a terminal would run them."""
    return "".join(_escaped(c) for c in str(text))


def _escaped(character: str) -> str:
    if unicodedata.category(character) == "Cc" or character in BIDI_CONTROLS:
        return repr(character)[1:-1]
    return character


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
