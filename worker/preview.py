"""A live preview of a recording: one JPEG of the capture's display, grabbed apart from the recording.

A separate ffmpeg grabs one frame, so a preview that fails (or is slow) can never disturb the evidence being
recorded. About 40 ms of CPU per grab of a 2x2 layout on this machine; it runs every 2 s while recording.
"""

from __future__ import annotations

import asyncio
import contextlib

import ffmpeg

PREVIEW_WIDTH = 960
GRAB_TIMEOUT = 5.0
MAX_PREVIEW_BYTES = 2 << 20


async def grab_preview(display: str, width: int, height: int, *, ffmpeg_path: str = "ffmpeg") -> bytes:
    """A JPEG of the display, scaled to PREVIEW_WIDTH wide; raises OSError when it cannot be had."""
    command = (
        ffmpeg.input(display, f="x11grab", video_size=(width, height), draw_mouse=0)
        .filter("scale", PREVIEW_WIDTH, -2)
        .output("pipe:", vframes=1, format="image2", vcodec="mjpeg", **{"q:v": 6})
        .global_args("-nostdin", "-loglevel", "error")
        .compile(cmd=ffmpeg_path)
    )
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), GRAB_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise OSError(f"the preview grab of {display} took over {GRAB_TIMEOUT:.0f} s") from None
    if process.returncode != 0 or not out.startswith(b"\xff\xd8") or len(out) > MAX_PREVIEW_BYTES:
        raise OSError(f"the preview grab of {display} failed: {err.decode(errors='replace')[-300:]}")
    return out
