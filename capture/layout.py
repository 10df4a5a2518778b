"""The grid: where each tile's window sits on the virtual display and in the composite video."""

from __future__ import annotations

import math
import re

from evidence import Layout, Rect, TileLayout, UsageError

# A 1280x720 CSS window at device scale 0.5 fills a 640x360 tile.
TILE_WIDTH = 640
TILE_HEIGHT = 360
WINDOW_CSS_WIDTH = 1280
WINDOW_CSS_HEIGHT = 720
DEVICE_SCALE = 0.5
LABEL_HEIGHT = 20
HEADER_HEIGHT = 24


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


def build_layout(urls: list[str], *, spec: str = "auto", fps: int = 15) -> Layout:
    rows, cols = grid_shape(len(urls), spec)
    cell_height = LABEL_HEIGHT + TILE_HEIGHT
    tiles = []
    for index, url in enumerate(urls):
        row, col = divmod(index, cols)
        x = col * TILE_WIDTH
        y = HEADER_HEIGHT + row * cell_height
        tiles.append(
            TileLayout(
                tile=index + 1,
                url=url,
                label_rect=Rect(x=x, y=y, width=TILE_WIDTH, height=LABEL_HEIGHT),
                rect=Rect(x=x, y=y + LABEL_HEIGHT, width=TILE_WIDTH, height=TILE_HEIGHT),
            )
        )
    return Layout(
        rows=rows,
        cols=cols,
        width=cols * TILE_WIDTH,
        height=HEADER_HEIGHT + rows * cell_height,
        fps=fps,
        header_rect=Rect(x=0, y=0, width=cols * TILE_WIDTH, height=HEADER_HEIGHT),
        tiles=tuple(tiles),
    )
