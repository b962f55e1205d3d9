"""The repo's own test-only set-up. It may import the `[test]` extra: no run of the plugin loads this file."""

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

    for pipeline in (
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "FluxPipeline",
        "StableDiffusion3Pipeline",
    ):
        getattr(diffusers, pipeline)  # diffusers imports each family's modules on first use


@pytest.fixture
def local_hub_in_process(monkeypatch, tmp_path):
    """Points this process's huggingface_hub at a local Hub (its endpoint and cache are read at import, so the
    constants are set, not the environment) and returns a function that serves repositories there."""
    from huggingface_hub import constants

    from tests.hub_server import LocalHub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    def serve(repos):
        hub = LocalHub(repos)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        return hub

    return serve
