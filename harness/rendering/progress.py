"""Progress of long work (training steps, renders): a line per phase and a tqdm bar per phase on the terminal,
quiet under `-q` and in xdist workers, whose output nobody sees."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from lora_harness import inert_text


class Progress:
    """Silent: what a session gets outside pytest, and under `-q` or xdist."""

    visible = False  # whether other libraries' progress bars (downloads) should draw theirs

    def shown(self) -> contextlib.AbstractContextManager:
        """A context in which what others write to the terminal reaches it (pytest captures it otherwise)."""
        return contextlib.nullcontext()

    def line(self, text: str) -> None:
        pass

    @contextlib.contextmanager
    def bar(self, total: int, description: str) -> Iterator[Callable[[], None]]:
        yield lambda: None


class TerminalProgress(Progress):
    """Writes past pytest's output capture: progress is for the person watching the run."""

    visible = True

    def __init__(self, config):
        self.config = config

    def shown(self):
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()

    def line(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        with self.shown():
            reporter.write_line(
                f"[lora-harness] {inert_text.visible(text)}"
            )  # adapter names come from strangers' files

    @contextlib.contextmanager
    def bar(self, total: int, description: str) -> Iterator[Callable[[], None]]:
        from tqdm import tqdm

        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            yield lambda: None
            return
        with self.shown():
            reporter.ensure_newline()
            shown = f"[lora-harness] {inert_text.visible(description)}"
            with tqdm(total=total, desc=shown, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None) as bar:
                yield lambda: bar.update(1)


def progress_for(config) -> Progress:
    shown = config.option.verbose >= 0 and not hasattr(config, "workerinput")
    return TerminalProgress(config) if shown else Progress()
