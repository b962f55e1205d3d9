"""The harness's records travel on test reports as the attribute `lora_harness` (a list of (kind, value)):
under xdist only reports reach the controller, and pytest carries a report's extra attributes across."""

import pytest

ATTRIBUTE = "lora_harness"
RESULT = "result"
ADAPTER = "adapter"
BASE = "base"
CONTROLS = "controls"
COSTS = "costs"  # U-Net calls and render-cache traffic since the previous report, by adapter

item_records = pytest.StashKey[list]()  # what a check recorded on its item, copied onto its next report
JUNIT_PROPERTIES = ("lora_check", "lora_status", "lora_value", "lora_threshold")


def records(report) -> list:
    return getattr(report, ATTRIBUTE, None) or []


def record_verdict(item: pytest.Item, result, adapter, junit: bool = True) -> None:
    """The one way a verdict (a CheckResult on a LoadedAdapter, from a check's test or taken again at its adapter's
    unloading) reaches the reports: the plugins amend it (pytest_lora_check_result), then `record` puts it on the
    item's next report for results.json and report.html, and in its JUnit properties with `junit`."""
    item.config.hook.pytest_lora_check_result(result=result, adapter=adapter)
    record(item, result.to_dict(), adapter.record, junit)


def record(item: pytest.Item, result: dict, adapter: dict | None, junit: bool = True) -> None:
    """`result` and its adapter's record (None: none to add, as for a crash) onto the item's next report; with
    `junit`, its plain values in the item's JUnit properties, in place of an earlier verdict's (a verdict taken again
    at teardown)."""
    recorded = item.stash.setdefault(item_records, [])
    recorded.append((RESULT, result))
    if adapter is not None:
        recorded.append((ADAPTER, adapter))
    if not junit:
        return
    kept = [prop for prop in item.user_properties if prop[0] not in JUNIT_PROPERTIES]
    item.user_properties[:] = kept + junit_properties(result)


def junit_properties(result: dict) -> list[tuple[str, object]]:
    """The few plain values a JUnit reader wants per test."""
    return list(zip(JUNIT_PROPERTIES, (result["check"], result["status"], result["value"], result["threshold"])))
