"""The policy every check's verdict passes through, whatever it measured: skipped and unloadable adapters, failed
controls (for the checks the registry gates on them), the file's defects, --compare-to, timing."""

from __future__ import annotations

import time
from collections.abc import Callable

from lora_harness.config.check_registry import CheckRegistry
from lora_harness.run.regression import compare
from lora_harness.verdicts.results import ERROR, FAILED, PASSED, SKIPPED, CheckResult


class CheckPolicy:
    def __init__(self, registry: CheckRegistry, previous, tolerances: dict, controls: Callable):
        self.registry = registry
        self.previous = previous  # regression.Previous, with --compare-to
        self.tolerances = tolerances  # --compare-tolerance
        self.controls = controls  # () -> the session's Controls, asked only for a gated check

    def run(self, adapter, check: str, evaluate: Callable[[], CheckResult]) -> CheckResult:
        started = time.perf_counter()
        spec = self.registry[check]
        if adapter.skipped:
            result = CheckResult(adapter.name, check, SKIPPED, message=adapter.skipped)
        elif adapter.problem:
            result = CheckResult(adapter.name, check, FAILED, message=adapter.problem)
        elif spec.gated_by_controls and not adapter.spec.is_reference and self.controls().status == FAILED:
            message = f"controls failed, no verdict: {self.controls().message}"
            result = CheckResult(adapter.name, check, ERROR, message=message)
        else:
            result = evaluate()
            if adapter.defects and result.status in (PASSED, FAILED, SKIPPED):
                # The measurement stays in the record; the verdict cannot be a pass for a broken file.
                own = f"; {check} measured: {result.message}" if result.message else ""
                result.status, result.message = FAILED, "; ".join(adapter.defects) + own
            if self.previous is not None:
                result = compare(result, self.previous, self.tolerances, spec)
        result.duration_s = round(time.perf_counter() - started, 4)
        return result
