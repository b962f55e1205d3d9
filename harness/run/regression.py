"""--compare-to: each check's value against the previous release's results.json, within a tolerance per check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lora_harness.config.check_registry import CheckRegistry, CheckSpec
from lora_harness.verdicts.results import FAILED, PASSED, CheckResult


@dataclass(frozen=True)
class Previous:
    path: Path
    harness_version: str
    values: dict[tuple[str, str], float]  # (adapter, check) -> value

    @classmethod
    def load(cls, path: Path) -> Previous:
        """Raises ValueError naming the file when it is not a results.json of schema 1."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(
                f"--compare-to {path}: no such file; pass the results.json of the previous release"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"--compare-to {path}: not a readable JSON file ({error}); pass a results.json") from None
        if (
            not isinstance(document, dict)
            or document.get("schema") != 1
            or not isinstance(document.get("results"), list)
        ):
            raise ValueError(f"--compare-to {path}: not a lora-harness results.json of schema 1")
        values = {}
        for record in document["results"]:
            if (
                isinstance(record, dict)
                and isinstance(record.get("value"), (int, float))
                and record.get("status") == PASSED
            ):
                values[(str(record.get("adapter")), str(record.get("check")))] = float(record["value"])
        return cls(path, str(document.get("harness_version")), values)


def parse_tolerances(lines: list[str], registry: CheckRegistry) -> dict[str, float]:
    """'pixel_diff=0.3' lines over the registry's defaults (relative change allowed in the bad direction, pinned with
    `lora_compare_tolerances`); raises ValueError quoting a bad line."""
    tolerances = registry.default_tolerances()
    for line in lines:
        check, _, value = line.partition("=")
        check = check.strip()
        if check not in tolerances or not value:
            raise ValueError(
                f"compare tolerance must be CHECK=FRACTION with CHECK in {', '.join(tolerances)}, got {line!r}"
            )
        try:
            tolerances[check] = float(value)
        except ValueError:
            raise ValueError(f"compare tolerance for {check} must be a number, got {value!r}") from None
        if not tolerances[check] >= 0:
            raise ValueError(f"compare tolerance for {check} must be 0 or more, got {value!r}")
    return tolerances


def compare(result: CheckResult, previous: Previous, tolerances: dict[str, float], spec: CheckSpec) -> CheckResult:
    """Record the previous value and the delta; a regression past the tolerance fails a passing check. A check whose
    spec has no direction of better is not compared."""
    before = previous.values.get((result.adapter, result.check))
    if before is None or spec.higher_is_better is None or not isinstance(result.value, (int, float)):
        return result
    now = float(result.value)
    tolerance = tolerances[result.check]
    result.details.update(previous_value=before, delta=now - before, compare_tolerance=tolerance)
    if spec.higher_is_better:
        regressed, bound, word = now < before * (1 - tolerance), before * (1 - tolerance), "dropped"
    else:
        regressed, bound, word = now > before * (1 + tolerance), before * (1 + tolerance), "grew"
    if regressed and result.status == PASSED:
        result.status = FAILED
        result.message = (
            f"regression against {previous.path}: {result.check} {word} from {before:.4g} to {now:.4g} "
            f"(allowed to {bound:.4g}, tolerance {tolerance:.0%}); investigate, or pin a new baseline"
        )
    return result
