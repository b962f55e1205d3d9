"""Where the run keeps its state in pytest's `config.stash`: the plugin puts it there, the check fixtures read it."""

from __future__ import annotations

import pytest

from lora_harness.config.check_registry import CheckRegistry

session_key = pytest.StashKey["HarnessSession"]()
registry_key = pytest.StashKey[CheckRegistry]()  # the built-in checks and the plugins' (pytest_lora_checks)
