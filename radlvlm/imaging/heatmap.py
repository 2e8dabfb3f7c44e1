"""A heat map as a transparent PNG to lay over a radiograph: where a finding classifier saw its evidence.

Colour from matplotlib's ``inferno`` (perceptually uniform, readable by colour-blind readers); opacity grows with
the heat so the radiograph stays visible where there is none. The PNG has the aspect of the image it belongs to,
so a viewer stretches it over the displayed image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage

__all__ = ["heatmap_png", "normalised_heat"]

MAX_OPACITY = 0.6  # at the hottest point: the radiograph still shows through


def normalised_heat(scores: np.ndarray) -> np.ndarray:
    """Activation scores → heat in [0, 1]: the positive evidence over its maximum (all 0 when there is none)."""
    positive = np.clip(np.asarray(scores, dtype=np.float32), 0.0, None)
    peak = float(positive.max()) if positive.size else 0.0
    return positive / peak if peak > 0 else np.zeros_like(positive)


def heatmap_png(heat: np.ndarray, *, longest_side: int = 256) -> bytes:
    """(rows, columns) heat in [0, 1] → an RGBA PNG, its longest side ``longest_side`` pixels (aspect kept)."""
    from matplotlib import colormaps  # noqa: PLC0415 - matplotlib: half a second to import, only when a map is asked for

    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.ndim != 2 or not heat.size:
        raise ValueError(f"a heat map is a non-empty 2-D array, got shape {heat.shape}")
    rgba = colormaps["inferno"](heat)
    rgba[..., 3] = heat * MAX_OPACITY
    picture = PILImage.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA")
    rows, columns = heat.shape
    scale = longest_side / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    buffer = io.BytesIO()
    picture.resize(size, PILImage.Resampling.BILINEAR).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
