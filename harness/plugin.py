"""pytest plugin wiring: the options registered, the run configured, the check modules collected and parametrized,
the adapters unloaded after their checks, and the report hooks.

Imports nothing heavy at import time, so `pytest --help` and runs without `--adapter` stay fast.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from lora_harness.config.check_registry import BUILTIN
from lora_harness.config.option_specs import GivenOptions, add_options
from lora_harness.config.stash_keys import registry_key, session_key
from lora_harness.inert_text import visible
from lora_harness.run import report_records

NODE_PREFIX = "lora_harness/checks"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from lora_harness.config import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("adapter"):
        return
    from lora_harness.fixtures import harness_fixtures
    from lora_harness.rendering.progress import progress_for
    from lora_harness.reports.results_table import ResultsTable
    from lora_harness.run import configure
    from lora_harness.run.session import HarnessSession

    try:
        registry = BUILTIN.with_checks(
            spec for specs in config.hook.pytest_lora_checks(config=config) for spec in specs
        )
    except ValueError as error:
        raise pytest.UsageError(f"lora-harness: {error}") from None
    config.stash[registry_key] = registry
    try:
        harness_config = configure.harness_config(GivenOptions(config), registry)  # before any model loads
    except ValueError as error:  # ConfigError and the parsers' errors: a usage error naming the option
        raise pytest.UsageError(f"lora-harness: {error}") from None
    previous = None
    if harness_config.compare_to is not None:
        from lora_harness.run.regression import Previous

        try:
            previous = Previous.load(harness_config.compare_to)
        except ValueError as error:
            raise pytest.UsageError(f"lora-harness: {error}") from None
    config.stash[session_key] = HarnessSession(
        harness_config, progress=progress_for(config), previous=previous, registry=registry, hook=config.hook
    )
    config.add_cleanup(lambda: _release_session(config))
    config.pluginmanager.register(harness_fixtures, "lora_harness.fixtures")
    if not hasattr(config, "workerinput"):  # under xdist only the controller writes reports
        table = ResultsTable(harness_config, previous)
        table.write()  # a valid results.json exists from the start, whatever happens later
        config.pluginmanager.register(ReportHooks(table), "lora_harness.report")
    check_files = [str(path) for path in registry.module_paths()]
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = check_files
        config.args_source = pytest.Config.ArgsSource.ARGS
    else:
        config.args = [*config.args, *check_files]


def _release_session(config: pytest.Config) -> None:
    """The session leaves with the run. What its start() froze out of the garbage collector's sight (the base and
    every module imported by then) stays frozen through pytest's own last collections (five, in its unraisable-
    exception check, a cleanup registered after this one and so run before it: 0.2 s each on SD1.5 unfrozen), then
    is ordinary garbage again, collected once so that an in-process run (the tests make them) frees the base.
    (Registered in pytest_configure, which runs before the built-in plugins' as this plugin registers after them.)"""
    froze = config.stash[session_key].base is not None  # an xdist controller never loads one
    del config.stash[session_key]
    if froze:
        gc.unfreeze()
        gc.collect()


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent):
    """Give the check modules a namespaced node id: they live in site-packages, outside the rootdir."""
    if session_key not in parent.config.stash or module_path not in parent.config.stash[registry_key].module_paths():
        return None
    return pytest.Module.from_parent(parent, path=module_path, nodeid=f"{NODE_PREFIX}/{module_path.name}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """The checks that will run decide what is rendered (workers collect every item too)."""
    harness = session.config.stash.get(session_key, None)
    if harness is not None:
        harness.prepare(sorted({check_name(item) for item in session.items if _adapter_spec(item) is not None}))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each check with its adapter: `-n N --dist loadgroup` then keeps an adapter's checks on one worker.
    With --shard, deselect the checks of the other shards' adapters."""
    if session_key not in config.stash:
        return
    kept = {None, *config.stash[session_key].config.checked_adapters}  # None: a test that checks no adapter
    deselected = [item for item in items if _adapter_spec(item) not in kept]
    if deselected:
        items[:] = [item for item in items if _adapter_spec(item) in kept]
        config.hook.pytest_deselected(items=deselected)
    if not config.pluginmanager.hasplugin("xdist"):
        return  # xdist registers the mark; without it the mark would only warn
    for item in items:
        spec = _adapter_spec(item)
        if spec is not None:
            item.add_marker(pytest.mark.xdist_group(name=spec.slot))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "adapter_spec" in metafunc.fixturenames:
        specs = metafunc.config.stash[session_key].config.adapters
        metafunc.parametrize("adapter_spec", specs, ids=[spec.name for spec in specs], indirect=True, scope="session")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After an adapter's last check (its item's own fixtures first), the adapter comes off the base, before the next
    one loads; after the last item, the session's closing digest. Both raise into this item's teardown report. A run
    that stops here (an interrupt, pytest.exit) leaves them to pytest_sessionfinish."""
    harness = item.config.stash.get(session_key, None)
    try:
        result = yield
    except (KeyboardInterrupt, pytest.exit.Exception):
        raise
    except BaseException:  # a fixture's teardown failed (pytest.fail included): the adapter still comes off
        if harness is not None:
            _after_teardown(item, nextitem, harness)
        raise
    if harness is not None:
        _after_teardown(item, nextitem, harness)
    return result


def _after_teardown(item: pytest.Item, nextitem: pytest.Item | None, harness) -> None:
    spec = _adapter_spec(item)
    try:
        if spec is not None and (nextitem is None or _adapter_spec(nextitem) != spec):
            _unload(item, harness, spec)
    finally:
        if nextitem is None:
            harness.close()


def _unload(item: pytest.Item, harness, spec) -> None:
    """Unload the adapter, and record the verdicts it took again (frozen_base's, with the unloading as a stage) on
    this teardown's report, for results.json (JUnit: on the check's own test case when this is it, as it is unless
    items are reordered or a plugin check follows it). One that now fails or errs where its test reported another
    status fails this teardown; so does an unloading that raised, its error recorded as theirs."""
    from lora_harness.run.adapter_lifecycle import UnloadFailed
    from lora_harness.verdicts.results import ERROR, FAILED

    try:
        retaken, failure = harness.unload(spec), None
    except UnloadFailed as error:
        retaken, failure = error.retaken, error
    worse = []
    for adapter, retake, result in retaken:
        report_records.record_verdict(item, result, adapter, junit=check_name(item) == result.check)
        if result.status in (FAILED, ERROR) and result.status != retake.first.status:
            worse.append(f"{result.adapter} {result.check}, once unloaded: {result.message}")
    if failure is not None:
        raise failure
    if worse:
        pytest.fail(visible("; ".join(worse)), pytrace=False)


@pytest.hookimpl(tryfirst=True)  # before the results table's last write
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A run that stopped before its last teardown (-x, --maxfail, an interrupt) still has its adapters taken off
    and its closing digest taken; what they find is printed, as the run has already failed or stopped."""
    harness = session.config.stash.get(session_key, None)
    if harness is None or harness.closed:
        return
    try:
        harness.finish()
    except Exception as error:  # noqa: BLE001 - sessionfinish must not raise: the reports are still to be written
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(visible(f"lora-harness: at the run's end: {error}"), red=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    session = item.config.stash.get(session_key, None)
    if session is None:
        return report
    recorded = item.stash.setdefault(report_records.item_records, [])
    has_result = any(kind == report_records.RESULT for kind, _ in recorded)
    if report.failed and not has_result and call.excinfo is not None and report.when in ("setup", "call"):
        # A crash inside a check still becomes a record: the report must say what happened.
        message = f"{call.excinfo.typename}: {call.excinfo.value}"
        report_records.record(item, _error_record(_adapter_spec(item), check_name(item), message), None)
        report.user_properties = list(item.user_properties)
    attached = list(recorded)
    for kind, value in attached:
        if kind == report_records.RESULT and item.config.pluginmanager.hasplugin("html"):
            _add_html_extras(report, value, session.config.report_dir)
    recorded.clear()  # each record travels once
    spec = _adapter_spec(item)
    attached.append((report_records.COSTS, {"adapter": spec.name if spec else None, **session.take_costs()}))
    if report.when == "teardown":
        if session.base is not None:
            attached.append((report_records.BASE, session.base_summary()))
        controls = session.controls_run
        if controls is not None:
            attached.append(
                (
                    report_records.CONTROLS,
                    {"status": controls.status, "message": controls.message, "details": controls.details},
                )
            )
    setattr(report, report_records.ATTRIBUTE, attached)
    return report


def _add_html_extras(report, result: dict, report_dir: Path) -> None:
    """Where a team publishes pytest-html reports, each check's evidence shows there too."""
    import base64

    import pytest_html

    extras = list(getattr(report, "extras", []))
    extras.append(pytest_html.extras.json({k: result[k] for k in ("check", "status", "value", "threshold", "message")}))
    for picture in (result.get("details") or {}).get("pictures", []):
        for kind in ("base", "adapted", "diff"):
            content = base64.b64encode((report_dir / picture[kind]).read_bytes()).decode()
            extras.append(pytest_html.extras.png(content, f"{kind}: {picture['prompt']}, seed {picture['seed']}"))
    report.extras = extras


def _adapter_spec(item: pytest.Item):
    return item.callspec.params.get("adapter_spec") if hasattr(item, "callspec") else None


def check_name(item: pytest.Item) -> str:
    """The check an item runs: its `check` parameter (fid, kid, cmmd share a test), else its test name."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return params.get("check") or item.originalname.removeprefix("test_")


def _error_record(spec, check: str, message: str) -> dict:
    from lora_harness.verdicts.results import ERROR, CheckResult

    return CheckResult(spec.name if spec else "?", check, ERROR, message=message).to_dict()


class ReportHooks:
    """Controller-side: every report's records go into the results table, which is written as it grows."""

    def __init__(self, table):
        self.table = table

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.table.expect(
            (_adapter_spec(item).name, check_name(item)) for item in session.items if _adapter_spec(item) is not None
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.table.add_report(report)

    def pytest_sessionfinish(self, exitstatus) -> None:
        self.table.finish(int(exitstatus))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        from lora_harness.reports.terminal import summary_lines

        terminalreporter.section("lora-harness")
        for line in summary_lines(self.table):
            terminalreporter.write_line(line)
