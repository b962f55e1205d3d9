"""Point base modules' forwards elsewhere for a while, leaving the modules themselves (their parameters, the
base's digests) as they are: how adapters kept off the base (LyCORIS networks, replaced modules) render."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


@contextlib.contextmanager
def forwards_swapped(swaps: list[tuple[torch.nn.Module, torch.nn.Module]]):
    """Each (module, owner): the module runs `owner`'s forward inside the block and its own again after it."""
    swapped = []
    try:
        for module, owner in swaps:
            own = module.__dict__.get("forward")  # an instance forward set by someone else, or none
            module.forward = _following(module, owner)
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
        if getattr(module.forward, "runs", None) is owner:
            mark()

    return module.register_forward_hook(ran)


def _following(module: torch.nn.Module, owner: torch.nn.Module):
    """`owner`'s forward, on the device `module` is on when it runs: under model CPU offload (--offload) the base's
    models move to the GPU as they run, and an owner, no submodule of theirs, would be left behind."""

    def forward(*args, **kwargs):
        device = _device(module)
        if device is not None and _device(owner) not in (None, device):
            owner.to(device)
        return owner.forward(*args, **kwargs)

    forward.runs = owner
    return forward


def _device(module: torch.nn.Module) -> torch.device | None:
    parameter = next(module.parameters(), None)
    return None if parameter is None else parameter.device
