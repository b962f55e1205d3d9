"""Whatever an adapter file brings (its name, metadata values and keys, tag names, tensor key names) is inert in
every output a run writes: no live HTML or link in the release card, no formula in results.csv, no markup in
report.html and no control character on the terminal. Runs go through the plugin as a user runs it."""

import csv
import json
from html.parser import HTMLParser

import pytest
from safetensors.torch import load_file, save_file

from tests.safetensors_bytes import one_tensor_header, raw_file

FAST = ("--reference-steps", "0", "--render-seeds", "1", "--render-steps", "2", "-p", "no:cacheprovider")
NO_RENDERS = ("-k", "release_metadata or param_budget")  # the outputs are under test, not the renders

SCRIPT = '<script>document.title="PWNED"</script>'
IMAGE = "<img src=x onerror=alert(1)>"
LINK = "[click](javascript:alert(1))"
TERMINAL = "\x1b[2J\x1b]0;owned\x07\r\u202e"  # clear screen, set the title, carriage return, right-to-left override
TERMINAL_SHOWN = "\\x1b[2J\\x1b]0;owned\\x07\\r\\u202e"  # the same, escaped visibly
NAME = f"=SUM(1)*cmd|'calc'!A0 {IMAGE}{LINK}`x`{TERMINAL}.safetensors"
METADATA = {
    "ss_network_dim": "4",
    "ss_tag_frequency": json.dumps(
        {
            "img": {
                SCRIPT: 9,
                IMAGE: 8,
                LINK: 7,
                "https://evil.example/x": 6,
                "a@evil.example": 5,
                "www.evil.example": 4,
                "``tick`` | pipe": 3,
                "line\n# heading\n<b>x</b>": 2,
            }
        }
    ),
    "ss_dataset_dirs": "<iframe src=https://evil.example>",
    "ss_sd_model_name": '<a href="https://evil.example">v1-5</a>',
    "ss_new_sd_model_hash": f"`` {SCRIPT} ``",
    "ss_learning_rate": "![i](https://evil.example/i.png)",
    "ss_optimizer": f"<!-- {TERMINAL} -->",
    f"ss_{SCRIPT}": "a metadata key from the file",
}
HOSTILE_KEY = f"down_blocks.0.{SCRIPT}{TERMINAL}=x.lora_A.weight"  # a tensor key name that lands in messages


@pytest.fixture
def hostile_run(pytester, write_lora, tmp_path):
    """One run on a file with a hostile name and metadata, beside one whose tensor key is hostile."""
    path = write_lora("kohya", NAME)
    save_file(load_file(path), path, metadata=METADATA)
    keys = tmp_path / "hostile-keys.safetensors"
    keys.write_bytes(raw_file(one_tensor_header(HOSTILE_KEY), bytes(512)))
    result = pytester.runpytest_inprocess("--adapter", path, "--adapter", keys, *FAST, *NO_RENDERS)
    return result, pytester.path / "lora-report"


class _Elements(HTMLParser):
    """Every element with its attributes, and the text a reader sees."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _rendered(markdown: str) -> _Elements:
    """As a viewer that shows raw HTML and links bare URLs renders it (GitHub-flavoured, html and linkify on)."""
    from markdown_it import MarkdownIt

    return _Elements(MarkdownIt("gfm-like", {"html": True, "linkify": True}).render(markdown))


CARD_ELEMENTS = {"h1", "h2", "p", "ul", "li", "strong", "code", "table", "thead", "tbody", "tr", "th", "td"}


def test_the_viewer_renders_raw_markup_live():
    """The control: the renderer the card is judged by runs what the card must not carry."""
    raw = _rendered(f"{SCRIPT} {IMAGE} {LINK} https://evil.example <a href=x>x</a> ![i](x.png)")
    assert {"script", "img", "a"} <= {tag for tag, _ in raw.elements}


def test_the_release_card_carries_the_file_s_text_but_no_live_markup(hostile_run):
    result, folder = hostile_run
    (card_folder,) = [p for p in (folder / "release_cards").iterdir() if p.name != "hostile-keys.safetensors"]
    assert card_folder.name == NAME  # the folder keeps the file's name, which holds no `/`
    card = (card_folder / "release_card.md").read_text()
    page = _rendered(card)
    assert {tag for tag, _ in page.elements} <= CARD_ELEMENTS, sorted({tag for tag, _ in page.elements} - CARD_ELEMENTS)
    assert all(not attributes for _, attributes in page.elements)  # no href, src, on* or style from the file
    shown = "".join(page.text)
    raw = (SCRIPT, IMAGE, LINK, "https://evil.example/x", "<iframe src=https://evil.example>")
    for value in (*raw, "![i](https://evil.example/i.png)"):
        assert value in shown, value  # shown as text, as the file has it
    assert "line\\n# heading\\n<b>x</b> (2)" in shown  # its newlines escaped: no heading or block of its own
    assert "\x1b" not in card and "\u202e" not in card and TERMINAL_SHOWN in shown
    assert sum(line.startswith("#") for line in card.splitlines()) == 9  # the title and the eight LORA-FINE sections


def test_results_csv_holds_no_formula_and_keeps_numbers(hostile_run):
    _, folder = hostile_run
    with (folder / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    shown = "'" + NAME.replace(TERMINAL, TERMINAL_SHOWN)
    assert {row["adapter"] for row in rows} == {shown, "hostile-keys.safetensors"}
    for row in rows:
        for column in ("adapter", "check", "status", "message"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), (column, row[column])
            assert "\x1b" not in row[column] and "\r" not in row[column]  # a bare CR would split the row
    budget = next(row for row in rows if row["adapter"] == shown and row["check"] == "param_budget")
    assert float(budget["value"]) > 0 and float(budget["threshold"]) > 0  # numbers stay numbers
    records = json.loads((folder / "results.json").read_text())["results"]
    assert {r["adapter"] for r in records} == {NAME, "hostile-keys.safetensors"}  # results.json keeps the truth


def test_a_negative_number_stays_a_number_and_a_text_cell_is_neutralised():
    from lora_harness.reports.results_table import results_frame

    record = {
        "adapter": "-rm.safetensors",
        "check": "pixel_diff",
        "status": "failed",
        "value": -0.25,
        "threshold": -1,
        "message": "@SUM(A1)",
        "duration_s": 0.5,
    }
    frame = results_frame({"results": [record]})
    row = next(csv.reader(frame.to_csv(index=False).splitlines()[1:]))
    assert row == ["'-rm.safetensors", "pixel_diff", "failed", "-0.25", "-1", "'@SUM(A1)", "0.5"]


def test_report_html_shows_the_file_s_text_as_text(hostile_run):
    _, folder = hostile_run
    page = _Elements((folder / "report.html").read_text())
    assert "script" not in {tag for tag, _ in page.elements} and "iframe" not in {tag for tag, _ in page.elements}
    for tag, attributes in page.elements:
        assert not any(name.startswith("on") for name in attributes), (tag, attributes)
        assert attributes.get("href", "#").startswith("#") and attributes.get("src", "data:").startswith("data:")
    shown = "".join(page.text)
    assert IMAGE in shown and HOSTILE_KEY.split(".lora_A")[0][:30] in shown


def test_the_terminal_gets_no_control_character_from_the_file(hostile_run):
    result, _ = hostile_run
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the hostile-keys file matches nothing, and says so
    for character in ("\x1b", "\x07", "\r", "\u202e"):
        assert character not in output, repr(character)
    assert output.count(TERMINAL_SHOWN) >= 3  # escaped, visibly: the name (progress, summary) and the key still told
    assert "a down or an up matrix but not both, first unet.down_blocks.0.<script>" in output
    assert "[lora-harness] loading adapter =SUM(1)" in output  # the progress line, escaped the same way


@pytest.mark.parametrize("config", ["0", "[1, 2]", '"r"'])
def test_lora_metadata_that_is_json_but_no_object_fails_naming_the_file_and_the_reports_are_written(
    pytester, write_lora, config
):
    """Found by the long fuzz: such a file crashed the loader (TypeError) and, through the release card, the
    writing of the reports."""
    path = write_lora("peft-file", "odd-config.safetensors")
    save_file(load_file(path), path, metadata={"format": "pt", "lora_adapter_metadata": config})
    result = pytester.runpytest_inprocess("--adapter", path, *FAST, *NO_RENDERS)
    result.assert_outcomes(failed=2)
    records = json.loads((pytester.path / "lora-report" / "results.json").read_text())["results"]
    for record in records:
        assert f"{path}: its `lora_adapter_metadata` metadata is a JSON" in record["message"], record["message"]
        assert "not an object of LoraConfig fields; save the adapter again" in record["message"]
    card = pytester.path / "lora-report" / "release_cards" / "odd-config.safetensors" / "release_card.md"
    assert "## E: Export with metadata" in card.read_text() and (pytester.path / "lora-report" / "report.html").exists()
