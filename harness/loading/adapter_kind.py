"""What a kind of adapter file is to the harness: which files are its own, and how one is applied and proven.
The kinds, one module each, are listed in the order they are asked in `kinds/__init__.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lora_harness.bases.families import Family, Signature
from lora_harness.loading.adapter_file import AdapterFile
from lora_harness.loading.application import Application


@dataclass(frozen=True)
class AdapterKind:
    name: str  # what the field calls it
    # Whether a file is this kind's, from its keys (never its values) and the base's family.
    claims: Callable[[AdapterFile, Family], bool]
    # (pipeline, the base's signature, the file, the adapter's name) -> what landed, proven; its `on_base` switches it
    # on and takes it off. Raises AdapterLoadError (FamilyMismatch for another family's file) naming the file.
    apply: Callable[[object, Signature, AdapterFile, str], Application]
