"""Pictures people would rather see than read: renders as PNG and |adapted - base| heatmaps with their scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# A dark-to-bright ramp (black, purple, orange, pale yellow) that stays readable when printed in grey.
HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, optimize=True)
    return path


def diff_heatmap(adapted: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-pixel mean |adapted - base| over channels (0-255), coloured from 0 to its maximum; returns (RGB, max)."""
    diff = np.abs(adapted.astype(np.float64) - base.astype(np.float64)).mean(axis=-1)
    peak = float(diff.max())
    level = diff / peak if peak > 0 else diff
    position = level * (len(HEAT_ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(HEAT_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    colours = HEAT_ANCHORS[low] * (1 - fraction) + HEAT_ANCHORS[low + 1] * fraction
    return colours.round().astype(np.uint8), peak


def heat_legend(width: int = 256, height: int = 12) -> np.ndarray:
    """The colour ramp itself, for the report's scale bar."""
    ramp = np.linspace(0, 1, width)[None, :].repeat(height, axis=0)
    image, _ = diff_heatmap(np.stack([ramp * 255] * 3, axis=-1), np.zeros((height, width, 3)))
    return image
