"""Fixtures that write adapters on the embedded tiny base, for the repo's tests and benchmarks.

pytest loads this file in every run of the plugin from a checkout (the check modules live in `checks/`, below it),
so it imports only the declared dependencies, and only inside the fixtures. Test-only set-up (packages of the
`[test]` extra) lives in `tests/conftest.py`, which no run of the plugin's check modules reaches.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_unet():
    from lora_harness.bases.tiny_base import build_tiny_pipeline

    return build_tiny_pipeline().unet


@pytest.fixture
def write_lora(tiny_unet, tmp_path):
    """write_lora(layout, name, rank=4, alpha=None, edit=None) -> path; `edit` may rewrite the module -> (A, B) map."""
    from lora_harness.fixtures.adapter_writers import make_lora, write_adapter

    def write(layout: str, name: str, rank: int = 4, alpha: float | None = None, zero_b: bool = False, edit=None):
        lora = make_lora(tiny_unet, rank=rank, seed=1, zero_b=zero_b)
        if edit is not None:
            lora = edit(lora)
        path = tmp_path / "adapters" / name
        return write_adapter(layout, lora, path, rank, alpha if alpha is not None else rank)

    return write
