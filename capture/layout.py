"""The grid: where each tile's window sits on the virtual display and in the composite video.

Every tile's window lays its page out at 1280x720 CSS px (what a laptop shows) and is drawn at a device scale
that fits the tile: 640x360 (scale 0.5, the default), 960x540 (0.75) or 1280x720 (1). A larger tile keeps small
print legible in the composite at the cost of more pixels to draw, grab and encode.
"""

from __future__ import annotations

import math
import re

from evidence import Layout, Rect, TileLayout, UsageError

WINDOW_CSS_WIDTH = 1280
WINDOW_CSS_HEIGHT = 720
# The same three names as evidence.CaptureRequest.tile_size.
TILE_SIZES: dict[str, tuple[int, int]] = {"640x360": (640, 360), "960x540": (960, 540), "1280x720": (1280, 720)}
DEFAULT_TILE_SIZE = "640x360"
# Label rows per tile width: a window is placed in CSS px (device px / scale), so every tile's top edge must be a
# whole number of CSS px (at 0.75 a multiple of 3 px: 44 px would be 58.67 CSS px), and the composite's height even
# (yuv420p): with the 24 px header, a 24 px label at 960x540.
LABEL_HEIGHTS = {640: 20, 960: 24, 1280: 20}
HEADER_HEIGHT = 24


def tile_size(spec: str) -> tuple[int, int]:
    """(width, height) of a tile size named like 640x360; a clear error naming the sizes there are otherwise."""
    try:
        return TILE_SIZES[spec]
    except KeyError:
        raise UsageError(f"tile size must be one of {', '.join(TILE_SIZES)}, not {spec!r}") from None


def device_scale(rect: Rect) -> float:
    """The device scale a tile's window is drawn at: its width over the window's 1280 CSS px."""
    return rect.width / WINDOW_CSS_WIDTH


def grid_shape(count: int, spec: str = "auto") -> tuple[int, int]:
    """Rows and columns for `count` tiles: `auto`, or `ROWSxCOLS`."""
    if spec == "auto":
        cols = math.ceil(math.sqrt(count))
        rows = math.ceil(count / cols)
        return rows, cols
    match = re.fullmatch(r"([1-3])x([1-3])", spec)
    if not match:
        raise UsageError(f"layout must be 'auto' or ROWSxCOLS with 1-3 each, not {spec!r}")
    rows, cols = int(match.group(1)), int(match.group(2))
    if rows * cols < count:
        raise UsageError(f"layout {spec} has {rows * cols} cells for {count} URLs")
    return rows, cols


def build_layout(urls: list[str], *, spec: str = "auto", fps: int = 15, size: str = DEFAULT_TILE_SIZE) -> Layout:
    rows, cols = grid_shape(len(urls), spec)
    width, height = tile_size(size)
    label_height = LABEL_HEIGHTS[width]
    cell_height = label_height + height
    tiles = []
    for index, url in enumerate(urls):
        row, col = divmod(index, cols)
        x = col * width
        y = HEADER_HEIGHT + row * cell_height
        tiles.append(
            TileLayout(
                tile=index + 1,
                url=url,
                label_rect=Rect(x=x, y=y, width=width, height=label_height),
                rect=Rect(x=x, y=y + label_height, width=width, height=height),
            )
        )
    return Layout(
        rows=rows,
        cols=cols,
        width=cols * width,
        height=HEADER_HEIGHT + rows * cell_height,
        fps=fps,
        header_rect=Rect(x=0, y=0, width=cols * width, height=HEADER_HEIGHT),
        tiles=tuple(tiles),
    )
