"""report.html: one self-contained file (inline CSS, images as data: URIs, charts as inline SVG, no script)."""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup

from lora_harness.config.check_registry import report_order
from lora_harness.rendering.pictures import heat_legend
from lora_harness.verdicts.results import NOT_RUN, adapter_verdict

from .charts import bar_chart, line_chart


def render_html(document: dict, report_dir: Path) -> str:
    environment = _environment()
    adapters = [_adapter_view(adapter, document, report_dir) for adapter in document["adapters"]]
    controls = document.get("controls") or {}
    losses = (controls.get("details") or {}).get("reference_losses") or []
    return environment.get_template("report.html.j2").render(
        document=document,
        adapters=adapters,
        verdict=_overall(adapters),
        checks=report_order(r["check"] for r in document["results"]),
        controls=controls,
        loss_chart=Markup(line_chart(losses, label="reference overfit loss per step")),
        legend=_data_uri_from_array(heat_legend()),
    )


def _adapter_view(adapter: dict, document: dict, report_dir: Path) -> dict:
    results = [r for r in document["results"] if r["adapter"] == adapter["name"]]
    order = report_order(r["check"] for r in results)
    results.sort(key=lambda r: order.index(r["check"]))
    status = adapter_verdict(r["status"] for r in results)
    worst = next((r for r in results if r["status"] == status), None)
    skipped = [r["check"] for r in results if r["status"] == "skipped"]
    if worst and worst["status"] not in ("passed", "skipped"):
        why = worst["message"]
    elif worst and worst["status"] == "passed":
        why = "every gating check passed" + (f"; not gated: {', '.join(skipped)} (reasons below)" if skipped else "")
    else:
        why = worst["message"] if worst else "no check ran"
    if adapter.get("defects"):
        why = "; ".join(adapter["defects"])
    budget = next((r for r in results if r["check"] == "param_budget"), None)
    pixel = next((r for r in results if r["check"] == "pixel_diff"), None)
    pictures = [
        {
            **picture,
            "base_uri": _data_uri(report_dir / picture["base"]),
            "adapted_uri": _data_uri(report_dir / picture["adapted"]),
            "diff_uri": _data_uri(report_dir / picture["diff"]),
        }
        for picture in ((pixel or {}).get("details") or {}).get("pictures", [])
    ]
    per_block = ((budget or {}).get("details") or {}).get("per_block") or {}
    health = next((r for r in results if r["check"] == "weight_health"), None)
    health_blocks = ((health or {}).get("details") or {}).get("per_block") or {}
    defects = "; ".join(adapter.get("defects") or [])
    for result in results:  # the file's defects stand once in the banner, not in every row
        own = result["message"].removeprefix(defects).removeprefix("; ") if defects else result["message"]
        result["shown_message"] = own or ("the file's defect above" if defects else "")
    return {
        "record": adapter,
        "results": results,
        "status": status,
        "why": why,
        "percent": ((budget or {}).get("details") or {}).get("percent_of_denoiser"),
        "pictures": pictures,
        "budget_chart": Markup(bar_chart(per_block)),
        "norm_chart": Markup(bar_chart({b: v["median_frobenius"] for b, v in health_blocks.items()}, digits=3)),
        "rank_chart": Markup(bar_chart({b: v["median_effective_rank"] for b, v in health_blocks.items()}, digits=2)),
    }


def _overall(adapters: list[dict]) -> str:
    """The run's verdict from its adapters': one that never ran outweighs any pass."""
    statuses = [a["status"] for a in adapters]
    worst = adapter_verdict(statuses)
    return NOT_RUN if NOT_RUN in statuses and worst in ("passed", "skipped") else worst


def _data_uri(path: Path) -> str:
    """The report is rewritten after every test: encode each picture once, not once per rewrite."""
    try:
        stat = path.stat()
    except OSError:
        return ""
    return _encoded(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4096)
def _encoded(path: Path, mtime_ns: int, size: int) -> str:  # mtime and size key the cache: a rewrite misses it
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _data_uri_from_array(image) -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import ChainableUndefined, Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("lora_harness.reports", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=ChainableUndefined,  # records from interrupted runs lack fields; show them empty
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    return environment


def _number(value) -> str:
    from jinja2 import Undefined

    if value is None or isinstance(value, Undefined):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
