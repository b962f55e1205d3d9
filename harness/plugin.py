"""pytest plugin wiring: options, collection of the check modules, parametrization, and the report hooks.

Imports nothing heavy at import time, so `pytest --help` and runs without `--adapter` stay fast.
"""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import pytest

from lora_harness.config.check_registry import BUILTIN, CheckRegistry
from lora_harness.run import report_records

session_key = pytest.StashKey["HarnessSession"]()
registry_key = pytest.StashKey[CheckRegistry]()  # the built-in checks and the plugins' (pytest_lora_checks)
NODE_PREFIX = "lora_harness/checks"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from lora_harness.config import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lora-harness", "LoRA adapter validation (lora-harness)")
    group.addoption(
        "--adapter",
        action="append",
        default=[],
        metavar="PATH",
        help="LoRA adapter to check: a .safetensors file or a PEFT folder; `reference` for the built-in reference "
        "overfit. Repeatable. Without it the plugin adds no tests.",
    )
    options = [
        (
            "--base-model",
            "base_model",
            "MODEL",
            "tiny",
            "Base: an embedded tiny twin (`tiny`, `tiny-sdxl`, `tiny-flux`, ...: one per family, listed in docs/families.md), a local diffusers folder, a single-file checkpoint, or a hub id (fetched into the Hugging Face cache on first use, as diffusers does). Default: tiny.",
        ),
        (
            "--render-size",
            "render_size",
            "PX",
            "",
            "Render height and width in pixels, a multiple of 8. Default: the base's native size.",
        ),
        ("--render-steps", "render_steps", "N", "4", "Denoising steps per render. Default: 4."),
        ("--render-seeds", "render_seeds", "N", "2", "Seeds rendered per prompt. Default: 2."),
        (
            "--render-frames",
            "render_frames",
            "N",
            "5",
            "Frames per render of a video base (Wan); its pipeline rounds the count to one it can make. Image bases "
            "render one. Default: 5.",
        ),
        (
            "--render-batch-size",
            "render_batch_size",
            "N",
            "16",
            "Most renders (prompt x seed) per pipeline call; lower it when memory runs short. Default: 16.",
        ),
        (
            "--render-cache",
            "render_cache",
            "DIR",
            "",
            "Folder of the render cache. Default: lora_harness_renders in pytest's cache folder (.pytest_cache).",
        ),
        ("--prompts", "prompts", "FILE", "", "Prompts, one per line. Default: a small built-in set."),
        (
            "--reference-steps",
            "reference_steps",
            "N",
            "30",
            "Training steps of the reference overfit; 0 skips it and its controls. Default: 30.",
        ),
        (
            "--report-dir",
            "report_dir",
            "DIR",
            "lora-report",
            "Where results.json and the report go. Default: lora-report/.",
        ),
        ("--device", "device", "DEVICE", "auto", "auto, cpu, cuda or cuda:N. Default: auto (CUDA when present)."),
        (
            "--dtype",
            "dtype",
            "DTYPE",
            "auto",
            "auto, float32, float16 or bfloat16: what the base and the adapters compute in. Default: auto (the base's "
            "stored dtype on CUDA, float32 elsewhere).",
        ),
        (
            "--param-budget",
            "param_budget",
            "BUDGET",
            "2%",
            "Most LoRA parameters allowed: a count or a percentage of the denoiser. Default: 2%.",
        ),
        (
            "--diff-floor",
            "diff_floor",
            "FLOAT",
            "0.5",
            "Least mean |adapted - base| pixel difference (0-255) an adapter must make. Default: 0.5.",
        ),
        (
            "--heldout-prompts",
            "heldout_prompts",
            "FILE",
            "",
            "clip_heldout: prompts the adapter never trained on, one per line. Default: 4 built-in prompts.",
        ),
        (
            "--clip-margin",
            "clip_margin",
            "POINTS",
            "2",
            "clip_heldout: largest drop of the CLIP score's 95% CI lower bound allowed (100 x cosine). Default: 2.",
        ),
        (
            "--clip-model",
            "clip_model",
            "SPEC",
            "",
            "open_clip CLIP for the quality checks: ARCH:TAG (an open_clip pretrained tag, fetched into the Hugging Face "
            "cache on first use), ARCH:PATH (a local .safetensors checkpoint), hf-hub:ORG/REPO, or none. Default: "
            "ViT-L-14:openai on a real base; the embedded tiny base's self-test CLIP (never gating) on `tiny`.",
        ),
        (
            "--train-captions",
            "train_captions",
            "FILE",
            "",
            "Training captions, one per line: held-out prompts that overlap them are left out. Default: the file's tags.",
        ),
        (
            "--reference-images",
            "reference_images",
            "DIR",
            "",
            "fid/kid/cmmd: images of the style or subject the adapter should carry. Default: none (the three skip).",
        ),
        (
            "--inception-weights",
            "inception_weights",
            "WEIGHTS",
            "",
            "fid/kid: the Inception v3 to embed with: torch-fidelity (its published weights, fetched on first use), "
            "a URL or a local .pth/.safetensors of them, or none (the CLIP's features). Default: torch-fidelity on a "
            "real base, the CLIP's features on an embedded one.",
        ),
        (
            "--train-images",
            "train_images",
            "DIR",
            "",
            "mode_collapse: training images; held-out renders that nearly copy one fail. Default: none.",
        ),
        (
            "--diversity-floor",
            "diversity_floor",
            "FRACTION",
            "0.5",
            "mode_collapse: least share of the base's diversity across seeds and prompts. Default: 0.5.",
        ),
        (
            "--copy-similarity",
            "copy_similarity",
            "COSINE",
            "0.95",
            "mode_collapse: CLIP similarity to a training image above which a render is a copy. Default: 0.95.",
        ),
        (
            "--dead-share",
            "dead_share",
            "FRACTION",
            "0.1",
            "weight_health: most modules allowed a zero update (ΔW ≈ 0). Default: 0.1.",
        ),
        (
            "--norm-outlier-k",
            "norm_outlier_k",
            "K",
            "6",
            "weight_health: robust deviations (MAD, log10 norm) a module may stray from its block. Default: 6.",
        ),
        (
            "--min-effective-rank-ratio",
            "min_effective_rank_ratio",
            "FRACTION",
            "0",
            "weight_health: least median effective rank / paid rank; 0 reports it without gating. Default: 0.",
        ),
        (
            "--shard",
            "shard",
            "K/N",
            "",
            "Check only shard K of N of the adapters (round-robin over the --adapter order), e.g. one CI job per shard; "
            "`python -m lora_harness merge` joins the shards' reports. Default: every adapter.",
        ),
    ]
    for flag, dest, metavar, default, help_text in options:
        group.addoption(flag, dest=dest, metavar=metavar, default=None, help=help_text.replace("%", "%%"))
        parser.addini(f"lora_{dest}", f"{help_text} (ini twin of {flag}; the command line wins)", default=default)
    group.addoption(
        "--compare-to",
        dest="compare_to",
        metavar="RESULTS_JSON",
        default=None,
        help="A previous release's results.json: a check whose value regressed past its tolerance fails.",
    )
    parser.addini("lora_compare_to", "ini twin of --compare-to", default="")
    defaults = ", ".join(f"{check}={tolerance:g}" for check, tolerance in BUILTIN.default_tolerances().items())
    tolerance_help = f"CHECK=FRACTION: allowed relative regression. Defaults: {defaults}."
    group.addoption("--compare-tolerance", action="append", default=[], metavar="CHECK=FRACTION", help=tolerance_help)
    parser.addini("lora_compare_tolerances", f"{tolerance_help} One per line.", type="linelist", default=[])
    no_cache_help = "Render everything afresh and write no render cache."
    group.addoption("--no-render-cache", action="store_true", default=None, help=no_cache_help)
    parser.addini(
        "lora_no_render_cache", f"{no_cache_help} (ini twin of --no-render-cache)", type="bool", default=False
    )
    require_help = (
        "Fail release_metadata when the file lacks fields a release needs (base, rank, alpha, lr, steps, dataset)."
    )
    group.addoption("--require-metadata", action="store_true", default=None, help=require_help)
    parser.addini(
        "lora_require_metadata", f"{require_help} (ini twin of --require-metadata)", type="bool", default=False
    )
    offload_help = (
        "Run the pipeline with diffusers' model CPU offload on CUDA (each model on the GPU only while it runs), for "
        "bases larger than GPU memory; without a CUDA device it is not used, and the run says so. Default: off."
    )
    group.addoption("--offload", action="store_true", default=None, help=offload_help)
    parser.addini("lora_offload", f"{offload_help} (ini twin of --offload)", type="bool", default=False)
    offline_help = (
        "Never use the network: a hub id comes from the local Hugging Face cache alone, as with HF_HUB_OFFLINE=1 "
        "(a usage error names what to fetch). Default: off (a hub id is fetched on first use)."
    )
    group.addoption("--offline", action="store_true", default=None, help=offline_help)
    parser.addini("lora_offline", f"{offline_help} (ini twin of --offline)", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("adapter"):
        return
    from lora_harness.fixtures import harness_fixtures
    from lora_harness.rendering.progress import progress_for
    from lora_harness.reports.results_table import ResultsTable
    from lora_harness.run.session import HarnessSession

    try:
        registry = BUILTIN.with_checks(
            spec for specs in config.hook.pytest_lora_checks(config=config) for spec in specs
        )
    except ValueError as error:
        raise pytest.UsageError(f"lora-harness: {error}") from None
    config.stash[registry_key] = registry
    harness_config = _harness_config(config, registry)  # raises pytest.UsageError before any model loads
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
    from lora_harness.reports.terminal import visible
    from lora_harness.run.session import UnloadFailed
    from lora_harness.verdicts.results import ERROR, FAILED

    try:
        retaken, failure = harness.unload(spec), None
    except UnloadFailed as error:
        retaken, failure = error.retaken, error
    worse = []
    for adapter, retake, result in retaken:
        item.config.hook.pytest_lora_check_result(result=result, adapter=adapter)
        report_records.record(item, result.to_dict(), adapter.record, junit=check_name(item) == result.check)
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
        from lora_harness.reports.terminal import visible

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


def _shown(config: pytest.Config):
    """Output written meanwhile goes to the terminal, not to pytest's capture."""
    capture = config.pluginmanager.getplugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()


def _harness_config(config: pytest.Config, registry: CheckRegistry):
    """Options over ini values, parsed and validated; a bad value is a usage error naming the option."""
    from lora_harness.bases.base import resolve_dtype, resolve_offload
    from lora_harness.bases.resolve import resolve_base
    from lora_harness.config import options
    from lora_harness.config.config import (
        DEFAULT_PROMPTS,
        HarnessConfig,
        adapter_specs,
        image_folder,
        read_lines,
        resolve_device,
        writable_folder,
    )
    from lora_harness.config.shard import parse_shard
    from lora_harness.run.regression import parse_tolerances
    from lora_harness.verdicts.clip_heldout import DEFAULT_HELDOUT_PROMPTS
    from lora_harness.verdicts.inception import check_inception_weights

    def value(dest: str) -> str:
        given = config.getoption(dest)
        return str(given if given is not None else config.getini(f"lora_{dest}")).strip()

    try:
        prompts = read_lines("--prompts", value("prompts")) if value("prompts") else DEFAULT_PROMPTS
        base_model = value("base_model")
        offline = bool(config.getoption("offline") or config.getini("lora_offline"))
        with _shown(config):  # a hub id's download shows its progress
            base_path = resolve_base(base_model, offline)
        device = resolve_device(options.parse_device(value("device")), _worker_index(config))
        dtype, dtype_choice = resolve_dtype(options.parse_dtype(value("dtype")), device, base_model, base_path)
        offload_requested = bool(config.getoption("offload") or config.getini("lora_offload"))
        offload, offload_choice = resolve_offload(offload_requested, device)
        return HarnessConfig(
            adapters=adapter_specs(config.getoption("adapter")),
            base_model=base_model,
            base_path=base_path,
            offline=offline,
            render_size=options.parse_render_size(value("render_size")) if value("render_size") else None,
            render_steps=options.parse_positive_int(value("render_steps"), "--render-steps"),
            render_seeds=options.parse_positive_int(value("render_seeds"), "--render-seeds"),
            render_frames=options.parse_positive_int(value("render_frames"), "--render-frames"),
            render_batch_size=options.parse_positive_int(value("render_batch_size"), "--render-batch-size"),
            render_cache=_render_cache(config, value("render_cache")),
            prompts=prompts,
            reference_steps=options.parse_non_negative_int(value("reference_steps"), "--reference-steps"),
            report_dir=writable_folder("--report-dir", value("report_dir")),
            device=device,
            dtype=dtype,
            dtype_choice=dtype_choice,
            offload_requested=offload_requested,
            offload=offload,
            offload_choice=offload_choice,
            param_budget=options.parse_param_budget(value("param_budget")),
            diff_floor=options.parse_non_negative_float(value("diff_floor"), "--diff-floor"),
            dead_share=options.parse_fraction(value("dead_share"), "--dead-share"),
            norm_outlier_k=options.parse_non_negative_float(value("norm_outlier_k"), "--norm-outlier-k"),
            min_effective_rank_ratio=options.parse_fraction(
                value("min_effective_rank_ratio"), "--min-effective-rank-ratio"
            ),
            heldout_prompts=read_lines("--heldout-prompts", value("heldout_prompts"))
            if value("heldout_prompts")
            else DEFAULT_HELDOUT_PROMPTS,
            clip_margin=options.parse_non_negative_float(value("clip_margin"), "--clip-margin"),
            clip_model=value("clip_model") or None,
            train_captions=read_lines("--train-captions", value("train_captions")) if value("train_captions") else (),
            reference_images=image_folder("--reference-images", value("reference_images"))
            if value("reference_images")
            else None,
            inception_weights=check_inception_weights(value("inception_weights"))
            if value("inception_weights")
            else None,
            train_images=image_folder("--train-images", value("train_images")) if value("train_images") else None,
            diversity_floor=options.parse_fraction(value("diversity_floor"), "--diversity-floor"),
            copy_similarity=options.parse_fraction(value("copy_similarity"), "--copy-similarity"),
            require_metadata=bool(config.getoption("require_metadata") or config.getini("lora_require_metadata")),
            shard=parse_shard(value("shard"), len(config.getoption("adapter"))) if value("shard") else None,
            compare_to=Path(value("compare_to")).expanduser().resolve() if value("compare_to") else None,
            compare_tolerances=parse_tolerances(
                [*config.getini("lora_compare_tolerances"), *config.getoption("compare_tolerance")], registry
            ),
        )
    except ValueError as error:  # ConfigError and the parsers' errors
        raise pytest.UsageError(f"lora-harness: {error}") from None


def _worker_index(config: pytest.Config) -> int | None:
    """gw0 -> 0 under pytest-xdist; None in a plain run."""
    workerinput = getattr(config, "workerinput", None)
    return int(workerinput["workerid"].removeprefix("gw")) if workerinput else None


def _render_cache(config: pytest.Config, folder: str) -> Path | None:
    if config.getoption("no_render_cache") or config.getini("lora_no_render_cache"):
        return None
    if folder:
        return Path(folder).expanduser().resolve()
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    return cache.mkdir("lora_harness_renders") if cache is not None else None
