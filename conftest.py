"""What the repo's own test run needs: a tiny base and adapters written in every layout, built locally."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _model_libraries_imported_once():
    """pytester restores `sys.modules` after each test, dropping what the test imported first. A library imported
    again is a second copy: torch refuses diffusers' operators twice, and peft's or diffusers' classes from the new
    copy no longer match the layers made from the old one. Imported here, before any test, they outlive them all."""
    import diffusers
    import diffusers.loaders.lora_conversion_utils  # noqa: F401
    import lycoris.kohya  # noqa: F401
    import peft.tuners.loha  # noqa: F401
    import peft.tuners.lokr  # noqa: F401

    for pipeline in ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "FluxPipeline", "StableDiffusion3Pipeline"):
        getattr(diffusers, pipeline)  # diffusers imports each family's modules on first use


@pytest.fixture(scope="session")
def tiny_unet():
    from lora_harness.tiny_base import build_tiny_pipeline

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
