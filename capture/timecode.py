"""Visual time code shown by the demo pages and decoded from screen recordings.

Each demo page draws a strip of ``TIMECODE_CELLS`` square cells at its top-left corner,
refreshed on every animation frame with ``v = Date.now() mod 2**24`` (milliseconds).
Cells 0..23 carry the 24 bits of ``v`` (most significant first); cells 24..31 carry a
check byte ``b2 ^ b1 ^ b0 ^ 0xA5`` so that a frame caught mid-repaint, or a strip that is
covered or scaled wrongly, decodes to ``None`` instead of a wrong time. A white cell is
bit 1, a black cell bit 0. The JavaScript encoder lives in
``capture/fixtures/pages/static/timecode.js``; both sides must follow this spec.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

TIMECODE_CELLS = 32
TIMECODE_CELL_CSS_PX = 36
TIMECODE_VALUE_BITS = 24
TIMECODE_MODULUS = 1 << TIMECODE_VALUE_BITS
TIMECODE_CHECK_XOR = 0xA5

# Fraction of a cell's side that is sampled: the centre keeps clear of edge blur from scaling.
_SAMPLE_FRACTION = 0.4
_LUMA_THRESHOLD = 128.0


def timecode_check_byte(value: int) -> int:
    """The check byte for a 24-bit time code value."""
    v = value % TIMECODE_MODULUS
    return ((v >> 16) & 0xFF) ^ ((v >> 8) & 0xFF) ^ (v & 0xFF) ^ TIMECODE_CHECK_XOR


def timecode_bits(value: int) -> list[int]:
    """The 32 cell bits (value MSB first, then check byte MSB first) for ``value``."""
    v = value % TIMECODE_MODULUS
    word = (v << 8) | timecode_check_byte(v)
    return [(word >> (TIMECODE_CELLS - 1 - i)) & 1 for i in range(TIMECODE_CELLS)]


def _cell_bounds(origin: float, index: int, cell_px: float) -> tuple[int, int]:
    """Integer pixel bounds [start, end) of the central sampled span of one cell."""
    centre = origin + (index + 0.5) * cell_px
    half = max(0.5, cell_px * _SAMPLE_FRACTION / 2.0)
    start = round(centre - half)
    end = max(start + 1, round(centre + half))
    return start, end


def decode_timecode(frame: npt.NDArray[np.uint8], origin: tuple[int, int], cell_px: float) -> int | None:
    """Decode the time code strip whose top-left pixel is ``origin`` (x, y) in a BGR frame.

    Returns the millisecond value ``v`` (0 <= v < 2**24) or ``None`` when the strip is
    outside the frame or its check byte does not match.
    """
    if frame.ndim != 3 or frame.shape[2] < 3 or cell_px <= 0:
        return None
    height, width = frame.shape[0], frame.shape[1]
    ox, oy = origin
    y0, y1 = _cell_bounds(float(oy), 0, cell_px)
    if y0 < 0 or y1 > height:
        return None
    bits: list[int] = []
    for i in range(TIMECODE_CELLS):
        x0, x1 = _cell_bounds(float(ox), i, cell_px)
        if x0 < 0 or x1 > width:
            return None
        patch = frame[y0:y1, x0:x1, :3].astype(np.float64)
        # ITU-R BT.601 luma from BGR channel order, as OpenCV hands frames over.
        luma = 0.114 * patch[..., 0] + 0.587 * patch[..., 1] + 0.299 * patch[..., 2]
        bits.append(1 if float(luma.mean()) >= _LUMA_THRESHOLD else 0)
    word = 0
    for bit in bits:
        word = (word << 1) | bit
    value = word >> 8
    if word & 0xFF != timecode_check_byte(value):
        return None
    return value


def timecode_delta_ms(a: int, b: int) -> int:
    """Signed shortest difference ``a - b`` in milliseconds, across the 2**24 wrap."""
    diff = (a - b) % TIMECODE_MODULUS
    if diff >= TIMECODE_MODULUS // 2:
        diff -= TIMECODE_MODULUS
    return diff


def timecode_from_epoch_ms(epoch_ms: float) -> int:
    """The value a page shows at wall-clock ``epoch_ms`` (e.g. ``time.time() * 1000``)."""
    return int(epoch_ms) % TIMECODE_MODULUS


def draw_timecode(frame: npt.NDArray[np.uint8], origin: tuple[int, int], cell_px: float, value: int) -> None:
    """Paint the strip for ``value`` into a BGR frame in place (the Python twin of the JS encoder).

    Cell edges are rounded to whole pixels the same way the page does, so synthetic frames
    look like screenshots.
    """
    ox, oy = origin
    # Clamp at 0: a negative slice start would wrap around to the far edge of the frame.
    top = max(0, round(oy))
    bottom = max(0, round(oy + cell_px))
    for i, bit in enumerate(timecode_bits(value)):
        left = max(0, round(ox + i * cell_px))
        right = max(0, round(ox + (i + 1) * cell_px))
        frame[top:bottom, left:right, :3] = 255 if bit else 0
