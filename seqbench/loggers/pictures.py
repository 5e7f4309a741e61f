"""TensorBoard's pictures as arrays: heat maps coloured by a numpy look-up, and the norm-vs-t line
chart drawn with PIL. A matplotlib figure with `tight_layout` cost about 0.55 s per picture here;
these cost milliseconds, so pictures can follow the run without slowing it."""

from __future__ import annotations

import functools
import io
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLANK = (255, 255, 255)  # NaN cells (a norm that underflowed to 0, a padding-only timestep)
MIN_WIDTH, MIN_HEIGHT = 360, 180  # cells are repeated up to at least this many pixels
LEFT, RIGHT, TOP, BOTTOM = 76, 96, 30, 46  # margins of the labelled picture, in pixels
INK, GRID = (40, 40, 40), (225, 225, 225)
_LUTS: dict[str, np.ndarray] = {}


@functools.cache
def font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's own font: nothing to install


def lut(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map, computed once per map."""
    if cmap not in _LUTS:
        import matplotlib  # here, not at import: 0.3 s of a run's start-up, first needed later

        rgba = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))
        _LUTS[cmap] = (rgba[:, :3] * 255).round().astype(np.uint8)
    return _LUTS[cmap]


def repeats(rows: int, columns: int) -> tuple[int, int]:
    """How many pixels each cell gets (down, across) so that small maps stay readable."""
    return max(1, math.ceil(MIN_HEIGHT / max(rows, 1))), max(1, math.ceil(MIN_WIDTH / columns))


def heatmap_cells(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """values (S, T) -> (S * ry, T * rx, 3) uint8: one block of rows per snapshot (the first at
    the bottom), one block of columns per timestep; NaN cells are BLANK."""
    table = lut(cmap)
    span = vmax - vmin if vmax > vmin else 1.0
    with np.errstate(invalid="ignore"):
        index = np.clip(np.rint((values - vmin) / span * 255), 0, 255)
    missing = ~np.isfinite(values)
    rgb = table[np.where(missing, 0, index).astype(np.intp)]  # (S, T, 3)
    rgb[missing] = BLANK
    ry, rx = repeats(*values.shape)
    return np.repeat(np.repeat(rgb[::-1], ry, axis=0), rx, axis=1)


def value_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def heatmap_image(
    values: np.ndarray,
    steps: list[int],
    title: str,
    cmap: str,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "timestep t",
    first: int = 1,
) -> np.ndarray:
    """values (S, T) as a labelled (H, W, 3) picture: timestep t (or what `xlabel` names,
    numbered from `first`) across, training step up, a colour bar with its range on the right.
    The cells sit at (TOP, LEFT)."""
    low, high = value_range(values)
    vmin, vmax = low if vmin is None else vmin, high if vmax is None else vmax
    cells = heatmap_cells(values, cmap, vmin, vmax)
    height, width = cells.shape[:2]
    canvas = np.full((TOP + height + BOTTOM, LEFT + width + RIGHT, 3), 255, np.uint8)
    canvas[TOP : TOP + height, LEFT : LEFT + width] = cells
    bar = lut(cmap)[np.linspace(255, 0, height).round().astype(np.intp)]  # (height, 3), top high
    canvas[TOP : TOP + height, LEFT + width + 10 : LEFT + width + 24] = bar[:, None, :]
    image = Image.fromarray(canvas)
    draw, small = ImageDraw.Draw(image), font(15)
    draw.text((LEFT, 4), title, fill=INK, font=font(17))
    ry, rx = repeats(*values.shape)
    count, timesteps = values.shape
    for i in sorted({0, count // 2, count - 1}):  # first, middle and latest snapshot
        y = TOP + height - (i + 0.5) * ry
        draw.text((LEFT - 6, y), f"{steps[i]:,}", fill=INK, font=small, anchor="rm")
    for t in sorted({1, (timesteps + 1) // 2, timesteps}):
        x = LEFT + (t - 0.5) * rx
        draw.text((x, TOP + height + 4), str(t - 1 + first), fill=INK, font=small, anchor="mt")
    draw.text((LEFT + width / 2, TOP + height + 24), xlabel, fill=INK, font=small,
              anchor="mt")  # fmt: skip
    draw.text((LEFT - 6, TOP + height + 24), "step (up)", fill=INK, font=small, anchor="rt")
    for y, value in ((TOP, vmax), (TOP + height, vmin)):
        draw.text((LEFT + width + 28, y), f"{value:.3g}", fill=INK, font=small, anchor="lm")
    return np.asarray(image)


def line_chart(
    lines: list[tuple[str, np.ndarray, bool]], title: str, xlabel: str, ylabel: str,
    first: int = 1,
) -> np.ndarray:  # fmt: skip
    """Lines (label, positive values over t = first..first+T-1, dashed) on a log10 y axis, as
    (H, W, 3). Values <= 0 (underflow) leave gaps."""
    width, height, left, right, top, bottom = 600, 360, 70, 180, 50, 48
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw, small = ImageDraw.Draw(image), font(15)
    draw.text((left, 5), title, fill=INK, font=font(17))
    logs = [np.log10(np.where(v > 0, v, np.nan)) for _, v, _ in lines]
    finite = np.concatenate([g[np.isfinite(g)] for g in logs] or [np.zeros(0)])
    low, high = (math.floor(finite.min()), math.ceil(finite.max())) if finite.size else (0, 1)
    high = max(high, low + 1)
    length = max((len(v) for _, v, _ in lines), default=1)
    x0, x1, y0, y1 = left, width - right, height - bottom, top

    def xy(t: float, log: float) -> tuple[float, float]:
        across = (t - 1) / max(length - 1, 1)
        return x0 + across * (x1 - x0), y0 - (log - low) / (high - low) * (y0 - y1)

    decade_step = max(1, math.ceil((high - low) / 8))
    for decade in range(low, high + 1, decade_step):
        y = xy(1, decade)[1]
        draw.line([(x0, y), (x1, y)], fill=GRID)
        draw.text((x0 - 6, y), f"1e{decade}", fill=INK, font=small, anchor="rm")
    for t in sorted({1, (length + 1) // 2, length}):
        x = xy(t, low)[0]
        draw.text((x, y0 + 4), str(t - 1 + first), fill=INK, font=small, anchor="mt")
    draw.rectangle([x0, y1, x1, y0], outline=INK)
    draw.text(((x0 + x1) / 2, y0 + 24), xlabel, fill=INK, font=small, anchor="mt")
    draw.text((x0, y1 - 2), ylabel, fill=INK, font=small, anchor="lb")
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    for k, ((label, _, dashed), log) in enumerate(zip(lines, logs, strict=True)):
        colour = tuple(round(255 * c) for c in palette[k % len(palette)])
        points = [xy(t + 1, v) if np.isfinite(v) else None for t, v in enumerate(log)]
        for j, (a, b) in enumerate(itertools.pairwise(points)):
            if a is not None and b is not None and not (dashed and (j // 4) % 2):
                draw.line([a, b], fill=colour, width=2)
        y = y1 + 4 + 20 * k
        draw.line([(x1 + 8, y + 8), (x1 + 26, y + 8)], fill=colour, width=2)
        draw.text((x1 + 30, y), label, fill=INK, font=small)
    return np.asarray(image)


def png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (fast compression: these pictures are small)."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
