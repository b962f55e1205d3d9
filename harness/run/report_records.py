"""The harness's records travel on test reports as the attribute `lora_harness` (a list of (kind, value)):
under xdist only reports reach the controller, and pytest carries a report's extra attributes across."""

import pytest

ATTRIBUTE = "lora_harness"
RESULT = "result"
ADAPTER = "adapter"
BASE = "base"
CONTROLS = "controls"
COSTS = "costs"  # U-Net calls and render-cache traffic since the previous report, by adapter

item_records = pytest.StashKey[list]()  # what a check recorded on its item, copied onto its call report


def records(report) -> list:
    return getattr(report, ATTRIBUTE, None) or []


def junit_properties(result: dict) -> list[tuple[str, object]]:
    """The few plain values a JUnit reader wants per test."""
    return [
        ("lora_check", result["check"]),
        ("lora_status", result["status"]),
        ("lora_value", result["value"]),
        ("lora_threshold", result["threshold"]),
    ]
