"""Runs the plugin in forked children and kills them with SIGKILL, for tests/test_faults.py.

Importing torch and diffusers costs this CPU seconds, so the server imports them once and forks a child per run.
It reads one JSON request per line on stdin and answers one JSON line on stdout. A request names the run's folder,
its pytest arguments and where the kill lands:
- `timer`: the server sends SIGKILL `delay` seconds after the fork, wherever the run is;
- `render`: the child dies at its `nth` U-Net call, mid-render;
- `results` / `cache`: the child dies inside its `nth` write of a report file (results.json, results.csv, a
  release card, report.html; written in one chunk) / of a render-cache entry (PIL writes a PNG in many chunks:
  `writes` of them go whole), once `fraction` of the chunk it dies in reached the disk;
- `replace`: the child dies just before its `nth` rename of a written file into place;
- `none`: the run is left to finish.
A child that dies by its own hand sends itself SIGKILL (`os.kill(os.getpid(), SIGKILL)`): no handler, atexit hook or
flush runs, as with a kill from outside. The answer says whether SIGKILL ended the run, its exit status otherwise,
and whether it hung (still running after HUNG_S, then killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

HUNG_S = 120  # a run of the test's size takes seconds; this long means it hangs


def _import_once() -> None:
    """What a run imports, so a forked run does not import it again: the model libraries, the report's, and
    every pytest plugin installed (pytest loads them all at start). Nothing runs here: a process that has run
    torch's thread pool is not safe to fork (its children hang)."""
    from importlib.metadata import entry_points

    import diffusers
    import open_clip  # noqa: F401
    import pandas  # noqa: F401
    import peft.tuners.lora  # noqa: F401

    import lora_harness.plugin  # noqa: F401
    import lora_harness.reports.html  # noqa: F401
    import lora_harness.reports.results_table  # noqa: F401
    import lora_harness.run.session  # noqa: F401

    diffusers.StableDiffusionPipeline  # noqa: B018 - diffusers imports a family's modules on first use
    for plugin in entry_points(group="pytest11"):
        plugin.load()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Countdown:
    def __init__(self, nth: int):
        self.left = nth

    def reached(self) -> bool:
        self.left -= 1
        return self.left == 0


class _DyingFile:
    """A file that takes `writes` writes whole, then puts `fraction` of the next on disk and kills the process."""

    def __init__(self, handle, writes: int, fraction: float):
        self._handle, self._writes, self._fraction = handle, writes, fraction

    def write(self, data):
        if self._writes == 0:
            self._handle.write(data[: int(len(data) * self._fraction)])
            self._handle.flush()
            _die()
        self._writes -= 1
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


def _arm_write(folder: str, nth: int, writes: int, fraction: float) -> None:
    real_fdopen = os.fdopen
    countdown = _Countdown(nth)

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(folder) and countdown.reached():
            return _DyingFile(handle, writes, fraction)
        return handle

    os.fdopen = fdopen


def _arm_replace(nth: int) -> None:
    real_replace = os.replace
    countdown = _Countdown(nth)

    def replace(source, target):
        if countdown.reached():
            _die()
        return real_replace(source, target)

    os.replace = replace


def _arm_render(nth: int) -> None:
    import diffusers

    countdown = _Countdown(nth)
    real_forward = diffusers.UNet2DConditionModel.forward

    def forward(self, *args, **kwargs):
        if countdown.reached():
            _die()
        return real_forward(self, *args, **kwargs)

    diffusers.UNet2DConditionModel.forward = forward


def _child(request: dict) -> None:
    folder = request["folder"]
    os.chdir(folder)
    log = os.open(os.path.join(folder, f"run-{request['run']}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    point = request["point"]
    if point == "results":
        _arm_write(os.path.join(folder, "lora-report"), request["nth"], 0, request["fraction"])
    elif point == "cache":
        _arm_write(os.path.join(folder, "cache"), request["nth"], request["writes"], request["fraction"])
    elif point == "replace":
        _arm_replace(request["nth"])
    elif point == "render":
        _arm_render(request["nth"])
    import pytest

    os._exit(int(pytest.main(request["args"])))


def _run(request: dict) -> dict:
    pid = os.fork()
    if pid == 0:
        try:
            _child(request)
        finally:
            os._exit(70)  # never back into the server's loop
    # A timer kill lands after `delay`; any run still going after HUNG_S is killed and reported as hung.
    delay = request["delay"] if request["point"] == "timer" else HUNG_S
    deadline, status = time.monotonic() + delay, None
    while status is None and time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        status = code if done else None
        time.sleep(0.01)
    hung = status is None and request["point"] != "timer"
    if status is None:
        os.kill(pid, signal.SIGKILL)  # not reaped yet, so the pid is still this child's
        _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not hung
    return {"killed": killed, "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "hung": hung}


def main() -> None:
    _import_once()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
