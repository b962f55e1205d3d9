"""CheckResult: one check's verdict on one adapter, the record every report is rendered from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lora_harness.config.statuses import ERROR, FAILED, PASSED, SKIPPED

__all__ = ["ERROR", "FAILED", "PASSED", "SKIPPED", "CheckResult", "adapter_verdict", "verdict"]


@dataclass
class CheckResult:
    adapter: str
    check: str
    status: str  # passed | failed | error | skipped
    value: float | int | None = None
    threshold: float | int | None = None
    message: str = ""  # always set unless passed
    details: dict = field(default_factory=dict)
    duration_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def verdict(adapter: str, check: str, ok: bool, value, threshold, message: str, details: dict) -> CheckResult:
    """passed when ok, else failed with `message`."""
    return CheckResult(adapter, check, PASSED if ok else FAILED, value, threshold, "" if ok else message, details)


NOT_RUN = "not run"


def adapter_verdict(statuses) -> str:
    """One adapter's verdict from its checks' statuses, for every report: error, then failed, then passed (every
    gating check passed; some may have been skipped, saying why), then skipped (all of them were), else not run."""
    present = set(statuses)
    return next((status for status in (ERROR, FAILED, PASSED, SKIPPED) if status in present), NOT_RUN)
