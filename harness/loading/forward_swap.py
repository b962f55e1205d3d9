"""Point base modules' forwards elsewhere for a while, leaving the modules themselves (their parameters, the
base's digests) as they are: how adapters kept off the base (LyCORIS networks, replaced modules) render."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


@contextlib.contextmanager
def forwards_swapped(swaps: list[tuple[torch.nn.Module, Callable]]):
    """Each (module, forward): the module runs `forward` inside the block and its own again after it."""
    swapped = []
    try:
        for module, forward in swaps:
            own = module.__dict__.get("forward")  # an instance forward set by someone else, or none
            module.forward = forward
            swapped.append((module, own))
        yield
    finally:
        for module, own in reversed(swapped):
            if own is None:
                del module.forward
            else:
                module.forward = own


def watch_forward(module: torch.nn.Module, owner: torch.nn.Module, mark: Callable[[], None]):
    """A forward hook on `module` that calls `mark` when it ran `owner`'s forward (swapped in)."""

    def ran(*_):
        if getattr(module.forward, "__self__", None) is owner:
            mark()

    return module.register_forward_hook(ran)
