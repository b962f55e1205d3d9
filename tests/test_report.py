"""The reports reviewers and CI read, from real runs through the plugin: HTML, CSV, JUnit, pytest-html,
release cards, the release_metadata check and the --compare-to regression gate."""

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from tests.expectations import CHECKS, PASSING, SKIPPING

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")


class _Page(HTMLParser):
    """Every URL the page would load, and every image's source."""

    def __init__(self):
        super().__init__()
        self.urls, self.images, self.scripts = [], [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.scripts += tag == "script"
        for name in ("src", "href"):
            if attrs.get(name) and not attrs[name].startswith("#"):
                self.urls.append(attrs[name])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def parse_report(folder):
    page = _Page()
    page.feed((folder / "report.html").read_text())
    return page


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def test_a_passing_run_writes_every_report(pytester, write_lora):
    adapter = write_lora("kohya", "good.safetensors")
    result = pytester.runpytest_inprocess(
        "--adapter", adapter, *FAST, "--junitxml", "junit.xml", "--html", "ph.html", "--self-contained-html"
    )
    result.assert_outcomes(passed=PASSING, skipped=len(SKIPPING))
    folder = pytester.path / "lora-report"
    page = parse_report(folder)
    assert page.scripts == 0
    assert all(url.startswith("data:") for url in page.urls), [u for u in page.urls if not u.startswith("data:")][:3]
    sizes = [decode(uri).size for uri in page.images]
    assert (64, 64) in sizes and len(sizes) == 1 + 2 * 3  # the legend, then base | adapted | diff per prompt
    html = (folder / "report.html").read_text()
    assert "good.safetensors" in html and "max |diff|" in html and "<svg" in html  # per-block budget chart
    csv = (folder / "results.csv").read_text().splitlines()
    assert csv[0] == "adapter,check,status,value,threshold,message,duration_s" and len(csv) == 1 + len(CHECKS)
    card = (folder / "release_cards" / "good.safetensors" / "release_card.md").read_text()
    for heading in ("## L:", "## O:", "## R:", "## A:", "## F:", "## I:", "## N:", "## E:"):
        assert heading in card
    assert "| pixel_diff | passed |" in card

    from junitparser import JUnitXml, Properties, Property

    cases = {case.name: case for suite in JUnitXml.fromfile(str(pytester.path / "junit.xml")) for case in suite}
    case = cases["test_pixel_diff[good.safetensors]"]
    properties = {p.name: p.value for group in case.iterchildren(Properties) for p in group.iterchildren(Property)}
    assert properties["lora_check"] == "pixel_diff" and properties["lora_status"] == "passed"
    assert float(properties["lora_threshold"]) == 0.5 and float(properties["lora_value"]) > 0.5

    pytest_html_report = (pytester.path / "ph.html").read_text()
    for kind in ("base", "adapted", "diff"):  # each picture attached to test_pixel_diff as an extra
        assert f"{kind}: a photo of a cat sitting on a windowsill, seed 0" in pytest_html_report
    assert "data:image/png;base64," in pytest_html_report and "application/json" in pytest_html_report


def test_failing_error_and_interrupted_runs_say_so_in_the_report(pytester, write_lora):
    pytester.makeconftest(
        """
        def pytest_lora_check_result(result, adapter):
            if result.check == "param_budget":
                raise RuntimeError("budget exploded")
            if result.check == "release_metadata":
                raise KeyboardInterrupt
        """
    )
    zero = write_lora("peft-file", "zero-b.safetensors", zero_b=True)
    recorder = pytester.inline_run("--adapter", zero, *FAST, no_reraise_ctrlc=True)
    assert recorder.ret == pytest.ExitCode.INTERRUPTED
    folder = pytester.path / "lora-report"
    document = json.loads((folder / "results.json").read_text())
    statuses = {r["check"]: r["status"] for r in document["results"]}
    assert statuses == {"wiring": "failed", "param_budget": "error", "pixel_diff": "failed"}
    html = (folder / "report.html").read_text()
    assert "run interrupted" in html and "Not finished:</strong> zero-b.safetensors / release_metadata" in html
    assert "budget exploded" in html and "every up matrix (lora_B / lora_up) is all zero" in html
    assert '<span class="badge error">error</span>' in html and '<span class="badge failed">failed</span>' in html
    assert all(uri.startswith("data:") for uri in parse_report(folder).urls)


def test_every_report_gives_an_adapter_the_same_verdict(pytester, write_lora):
    """One function reads an adapter's checks: all skipped is skipped (the reference without training), some
    skipped beside passes is passed, in report.html, on the release card and in the terminal table alike."""
    good = write_lora("kohya", "good.safetensors")
    result = pytester.runpytest_inprocess(
        "--adapter", "reference", "--adapter", good, "--reference-steps", "0", "-p", "no:cacheprovider"
    )
    rows = [line.split() for line in result.stdout.lines if line.startswith(("reference ", "good.safetensors "))]
    assert {row[0]: row[-1] for row in rows} == {"reference": "skip", "good.safetensors": "PASS"}  # its verdict column
    folder = pytester.path / "lora-report"
    html = (folder / "report.html").read_text()
    for adapter, verdict in (("reference", "skipped"), ("good.safetensors", "passed")):
        card = (folder / "release_cards" / adapter / "release_card.md").read_text()
        assert f"Verdict of this run: **{verdict}**" in card, card[:300]
        assert f'<span class="badge {verdict}">{verdict}</span>' in html
    assert "<title>lora-harness report: passed</title>" in html


def test_release_metadata_catches_contradictions_and_missing_fields(pytester, write_lora):
    from safetensors.torch import load_file, save_file

    def with_metadata(name, **metadata):
        path = write_lora("kohya", name)
        save_file(load_file(path), path, metadata={k: str(v) for k, v in metadata.items()})
        return path

    complete = dict(
        ss_network_dim=4,
        ss_network_alpha=4,
        ss_base_model_version="sd_v1",
        ss_sd_model_name="v1-5.safetensors",
        ss_new_sd_model_hash="cc6cb27103",
        ss_learning_rate=1e-4,
        ss_steps=1000,
        ss_tag_frequency=json.dumps({"img": {"red sun": 3, "hills": 2}}),
    )
    adapters = {
        "complete.safetensors": with_metadata("complete.safetensors", **complete),
        "sdxl-claim.safetensors": with_metadata(
            "sdxl-claim.safetensors", **{**complete, "ss_base_model_version": "sdxl_base_v1-0"}
        ),
        "bare.safetensors": with_metadata("bare.safetensors", ss_network_dim=4),
    }
    result = pytester.runpytest_inprocess(
        *[a for p in adapters.values() for a in ("--adapter", p)], *FAST, "--require-metadata", "-k", "release_metadata"
    )
    result.assert_outcomes(passed=1, failed=2)
    records = {
        r["adapter"]: r for r in json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    }
    assert records["complete.safetensors"]["status"] == "passed"
    assert "trained on SDXL, the base under test is SD1.x" in records["sdxl-claim.safetensors"]["message"]
    assert (
        "--require-metadata: the file lacks base model, base model hash, alpha, learning rate, training steps, dataset"
        in records["bare.safetensors"]["message"]
    )
    card = (pytester.path / "lora-report" / "release_cards" / "complete.safetensors" / "release_card.md").read_text()
    assert "red sun (3)" in card and "`ss_new_sd_model_hash`: `cc6cb27103`" in card and "learning rate: 0.0001" in card


def test_compare_to_fails_a_regression_and_shows_the_delta(pytester, write_lora, tmp_path):
    adapter = write_lora("kohya", "good.safetensors")
    pytester.runpytest_inprocess("--adapter", adapter, *FAST).assert_outcomes(passed=PASSING, skipped=len(SKIPPING))
    previous = json.loads((pytester.path / "lora-report" / "results.json").read_text())
    for record in previous["results"]:
        if record["check"] == "pixel_diff":
            now = record["value"]
            record["value"] = now * 2  # the last release changed images twice as much
    (tmp_path / "previous.json").write_text(json.dumps(previous))
    result = pytester.runpytest_inprocess("--adapter", adapter, *FAST, "--compare-to", tmp_path / "previous.json")
    result.assert_outcomes(passed=PASSING - 1, failed=1, skipped=len(SKIPPING))
    records = {
        r["check"]: r for r in json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    }
    assert (
        "pixel_diff dropped from" in records["pixel_diff"]["message"]
        and "tolerance 25%" in records["pixel_diff"]["message"]
    )
    assert records["pixel_diff"]["details"]["previous_value"] == pytest.approx(now * 2)
    assert records["wiring"]["details"]["delta"] == 0
    assert "previous" in (pytester.path / "lora-report" / "report.html").read_text()
    loose = pytester.runpytest_inprocess(
        "--adapter", adapter, *FAST, "--compare-to", tmp_path / "previous.json", "--compare-tolerance", "pixel_diff=0.6"
    )
    loose.assert_outcomes(passed=PASSING, skipped=len(SKIPPING))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "*not a readable JSON file*"),
        (json.dumps({"schema": 7, "results": []}), "*not a lora-harness results.json of schema 1*"),
    ],
)
def test_compare_to_a_bad_file_is_a_usage_error(pytester, tmp_path, content, message):
    (tmp_path / "previous.json").write_text(content)
    result = pytester.runpytest_inprocess(
        "--adapter", "x.safetensors", "--compare-to", tmp_path / "previous.json", "-p", "no:cacheprovider"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_in_a_browser_loads_nothing_from_outside(pytester, write_lora):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the [test] extra")
    adapters = [write_lora("kohya", "good.safetensors"), write_lora("peft-file", "zero-b.safetensors", zero_b=True)]
    pytester.runpytest_inprocess(
        *[a for p in adapters for a in ("--adapter", p)],
        "--reference-steps",
        "5",
        "--render-seeds",
        "1",
        "-p",
        "no:cacheprovider",
    )
    report = pytester.path / "lora-report" / "report.html"
    requests, console_errors = [], []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)

        def block(route):
            if not route.request.url.startswith(("file:", "data:")):
                requests.append(route.request.url)
                return route.abort()
            return route.continue_()

        page.route("**/*", block)
        page.goto(report.as_uri())
        all_decoded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        image_count = page.evaluate("document.images.length")
        screenshot = pytester.path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert requests == [] and console_errors == []
    assert all_decoded and image_count == 2 * (1 + 2 * 3)  # per adapter: the legend, then 2 prompts x 3 pictures
    shot = Image.open(screenshot).convert("L")
    assert shot.size[1] > 900 and len(np.unique(np.asarray(shot.resize((64, 64))))) > 20  # not blank
    shutil.copy(screenshot, pytester.path.parent / "last-report-screenshot.png")
