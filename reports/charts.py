"""Small inline SVG charts for the report: no script, no font or image fetched from anywhere."""

from __future__ import annotations

from html import escape


def line_chart(values: list[float], width: int = 380, height: int = 150, label: str = "") -> str:
    """A polyline of `values` over their index; the y axis is labelled with the range, the x axis with the steps."""
    if not values:
        return ""
    left, right, top, bottom = 52, 12, 12, 26
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = (width - left - right) / max(len(values) - 1, 1)
    points = " ".join(
        f"{left + i * step:.1f},{top + (high - v) / span * (height - top - bottom):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)}">'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>'
        f'<polyline points="{points}" class="series"/>'
        f'<text x="{left - 4}" y="{top + 8}" class="tick end">{high:.4g}</text>'
        f'<text x="{left - 4}" y="{height - bottom}" class="tick end">{low:.4g}</text>'
        f'<text x="{left}" y="{height - 8}" class="tick">step 1</text>'
        f'<text x="{width - right}" y="{height - 8}" class="tick end">step {len(values)}</text>'
        f"</svg>"
    )


def bar_chart(values: dict[str, float], width: int = 360, bar: int = 18, digits: int = 0) -> str:
    """Horizontal bars, one per key, labelled with the key and its value."""
    if not values:
        return ""
    label_width, gap = 110, 6
    height = len(values) * (bar + gap) + gap
    top = max(values.values()) or 1
    rows = []
    for i, (name, value) in enumerate(values.items()):
        y = gap + i * (bar + gap)
        length = (width - label_width - 70) * value / top
        rows.append(
            f'<text x="{label_width - 6}" y="{y + bar - 5}" class="tick end">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar}" class="bar"/>'
            f'<text x="{label_width + length + 6:.1f}" y="{y + bar - 5}" class="tick">{value:,.{digits}f}</text>'
        )
    return f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">{"".join(rows)}</svg>'
