"""Tests of the offline fixture site, its media, and the visual time code round trip."""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from capture.fixtures import (
    PATH_FAIL_404,
    PATH_FAIL_HANG_LOAD,
    PATH_FAIL_HANG_RENDERER,
    PATH_PRODUCT,
    ROOM_TONES,
    FixtureServer,
    ensure_media,
    flv_path,
    live_path,
    live_playlist,
    live_playlist_path,
    page_paths,
)
from capture.fixtures.media import (
    MEDIA_VERSION,
    PROFILES,
    SEGMENT_COUNT,
    MediaProfile,
    make_room,
    media_dir_name,
    media_profile,
    room_dir,
)
from capture.timecode import (
    TIMECODE_CELL_CSS_PX,
    TIMECODE_CELLS,
    TIMECODE_MODULUS,
    decode_timecode,
    draw_timecode,
    timecode_bits,
    timecode_delta_ms,
    timecode_from_epoch_ms,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--force-device-scale-factor=0.5",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]
CELL_DEVICE_PX = TIMECODE_CELL_CSS_PX * 0.5


def _tool(name: str) -> str:
    # A missing tool must fail the run, not skip it: these tests are the fixtures' proof.
    path = shutil.which(name)
    assert path is not None, f"{name} is required for these tests but is not on PATH"
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fixture-cache")


@pytest.fixture(scope="module")
def server(cache_dir: pathlib.Path) -> Iterator[FixtureServer]:
    _tool("ffmpeg")
    with FixtureServer(cache_dir) as srv:
        yield srv


def _get(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers.items()), err.read()


# --- media -------------------------------------------------------------------------------


@pytest.mark.integration
def test_media_is_cached_and_complete(server: FixtureServer, cache_dir: pathlib.Path) -> None:
    root = server.media_root
    for room in ROOM_TONES:
        segments = sorted(p.name for p in room_dir(root, room).glob("seg*.ts"))
        assert segments == [f"seg{i:03d}.ts" for i in range(SEGMENT_COUNT)]
        vod = (room_dir(root, room) / "index.m3u8").read_text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in vod
        assert "#EXT-X-ENDLIST" in vod
    before = (root / "manifest.json").stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_media(cache_dir) == root
    assert time.monotonic() - started < 1.0, "a complete cache must be reused, not rebuilt"
    assert (root / "manifest.json").stat().st_mtime_ns == before
    leftovers = [p.name for p in cache_dir.iterdir() if p.name.startswith(f".{media_dir_name()}-")]
    assert leftovers == []


@pytest.mark.integration
def test_incomplete_media_is_rebuilt(server: FixtureServer, tmp_path: pathlib.Path) -> None:
    copy = tmp_path / server.media_root.name
    shutil.copytree(server.media_root, copy)
    missing = room_dir(copy, 3) / "seg017.ts"
    missing.unlink()
    assert ensure_media(tmp_path) == copy
    assert missing.stat().st_size > 0
    assert json.loads((copy / "manifest.json").read_text())["version"] == MEDIA_VERSION


def _ffprobe_streams(path: pathlib.Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [_tool("ffprobe"), "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    streams: list[dict[str, object]] = json.loads(out)["streams"]
    return streams


@pytest.mark.integration
def test_segment_codecs(server: FixtureServer) -> None:
    streams = _ffprobe_streams(room_dir(server.media_root, 1) / "seg005.ts")
    video = [s for s in streams if s["codec_type"] == "video"]
    audio = [s for s in streams if s["codec_type"] == "audio"]
    assert len(video) == 1 and len(audio) == 1
    assert video[0]["codec_name"] == "h264"
    assert (video[0]["width"], video[0]["height"]) == (640, 360)
    assert video[0]["r_frame_rate"] == "15/1"
    assert audio[0]["codec_name"] == "aac"
    assert audio[0]["sample_rate"] == "48000"


def test_profiles_are_named_and_an_unknown_one_is_refused() -> None:
    assert set(PROFILES) == {"360p15", "720p30", "1080p30"}
    assert (PROFILES["720p30"].width, PROFILES["720p30"].height, PROFILES["720p30"].fps) == (1280, 720, 30)
    with pytest.raises(ValueError, match="360p15, 720p30, 1080p30"):
        media_profile("4k60")
    with pytest.raises(ValueError):
        FixtureServer(pathlib.Path("/nonexistent"), profile="4k60")


@pytest.mark.integration
def test_a_platform_like_room_is_encoded_as_platforms_send(tmp_path: pathlib.Path) -> None:
    """The realistic profiles' encoding, on a small picture so it is quick: H.264 High with B-frames, the frame
    rate asked for, a keyframe at every 2 s segment start, and the bit rate really spent (grain), at constant
    rate."""
    small = MediaProfile("test", 320, 180, 30, 800, 64)
    out = tmp_path / "room"
    make_room(out, 2, ROOM_TONES[2], small)
    segment = out / "seg010.ts"
    video = next(s for s in _ffprobe_streams(segment) if s["codec_type"] == "video")
    assert (video["profile"], video["width"], video["height"], video["r_frame_rate"]) == ("High", 320, 180, "30/1")
    assert int(str(video["has_b_frames"])) > 0
    frames = subprocess.run(
        [_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=key_frame,pict_type",
         "-of", "csv=p=0", str(segment)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()
    assert len(frames) == 60 and frames[0].startswith("1") and sum(f.startswith("1") for f in frames) == 1
    assert any(f.endswith("B") for f in frames)
    kbps = sum(p.stat().st_size for p in out.glob("seg*.ts")) * 8 / 1000 / 60
    assert 800 * 0.85 < kbps < 800 * 1.5, kbps  # the video's rate, audio and the transport stream's overhead
    assert abs(_dominant_frequency(segment) - ROOM_TONES[2]) < 3.0


def _dominant_frequency(segment: pathlib.Path) -> float:
    raw = subprocess.run(
        [_tool("ffmpeg"), "-v", "error", "-i", str(segment), "-map", "0:a:0", "-ac", "1",
         "-ar", "48000", "-f", "s16le", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout  # fmt: skip
    samples = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
    assert samples.size > 48000, "a 2 s segment should decode to about 96000 samples"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    freqs = np.fft.rfftfreq(samples.size, d=1 / 48000)
    return float(freqs[int(np.argmax(spectrum))])


@pytest.mark.integration
@pytest.mark.parametrize("room", sorted(ROOM_TONES))
def test_room_tone(server: FixtureServer, room: int) -> None:
    peak = _dominant_frequency(room_dir(server.media_root, room) / "seg010.ts")
    assert abs(peak - ROOM_TONES[room]) < 3.0


# --- HTTP ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("key", [k for k in page_paths() if k != "fail_hang_load"])
def test_page_status(server: FixtureServer, key: str) -> None:
    status, headers, body = _get(server.url(page_paths()[key]))
    expected = 404 if key == "fail_404" else 200
    assert status == expected
    assert headers["Content-Type"].startswith("text/html")
    text = body.decode("utf-8")
    assert "</html>" in text
    if key.startswith(("live", "flv")):
        room = int(key[-1])
        assert f"直播间 {room}" in text
        if key.startswith("live"):
            assert f'data-transport="hls" data-src="{live_playlist_path(room)}"' in text
        else:
            assert f'data-transport="flv" data-src="{flv_path(room)}/stream.flv"' in text
        assert "muted" not in re.findall(r"<video[^>]*>", text)[0]
    if key in ("product", "fail_hang_renderer", "slow_renderer", "heavy_page") or key.startswith(("live", "flv")):
        assert "/static/timecode.js" in text


@pytest.mark.integration
def test_unknown_path_is_404(server: FixtureServer) -> None:
    assert _get(server.url("/no/such/page"))[0] == 404
    assert _get(server.url(f"/live/{max(ROOM_TONES) + 1}"))[0] == 404
    assert _get(server.url("/live/1/seg999.ts"))[0] == 404


@pytest.mark.integration
def test_static_and_media_content_types(server: FixtureServer) -> None:
    status, headers, body = _get(server.url("/static/timecode.js"))
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    status, headers, body = _get(server.url("/live/2/seg000.ts"))
    assert status == 200 and headers["Content-Type"] == "video/mp2t"
    assert body[:1] == b"\x47"  # MPEG-TS sync byte
    status, headers, _ = _get(server.url("/product/img/main1.jpg"))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"


@pytest.mark.integration
def test_range_request(server: FixtureServer) -> None:
    request = urllib.request.Request(server.url("/live/1/seg001.ts"), headers={"Range": "bytes=188-375"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"].startswith("bytes 188-375/")
        assert len(resp.read()) == 188


@pytest.mark.integration
def test_live_playlist_over_http_slides(server: FixtureServer) -> None:
    def fetch() -> tuple[dict[str, str], str]:
        status, headers, body = _get(server.url(live_playlist_path(1)))
        assert status == 200
        return headers, body.decode("ascii")

    headers, first = fetch()
    assert headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert "no-cache" in headers["Cache-Control"]
    assert "#EXT-X-ENDLIST" not in first
    assert len(re.findall(r"^seg\d{3}\.ts$", first, re.M)) == 4
    time.sleep(2.2)
    _, second = fetch()
    seq = [int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", text).group(1)) for text in (first, second)]  # type: ignore[union-attr]
    assert seq[1] > seq[0]
    now_index = int(time.time() // 2)
    assert now_index - 4 <= seq[1] <= now_index


def test_live_playlist_generator() -> None:
    # 300 s = global segment 150 = loop segment 0, the 5th wrap.
    text = live_playlist(301.0)
    assert "#EXT-X-MEDIA-SEQUENCE:147\n" in text
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:4\n" in text
    assert "#EXT-X-TARGETDURATION:2\n" in text
    uris = re.findall(r"^seg\d{3}\.ts$", text, re.M)
    assert uris == ["seg027.ts", "seg028.ts", "seg029.ts", "seg000.ts"]
    # The discontinuity sits between the loop's last segment and its first, and nowhere else.
    lines = text.splitlines()
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert lines.index("seg029.ts") < lines.index("#EXT-X-DISCONTINUITY") < lines.index("seg000.ts")
    assert "#EXT-X-ENDLIST" not in text
    # Same slot, same playlist; next slot slides by one.
    assert live_playlist(301.9) == text
    later = live_playlist(302.0)
    assert "#EXT-X-MEDIA-SEQUENCE:148\n" in later
    assert re.findall(r"^seg\d{3}\.ts$", later, re.M) == ["seg028.ts", "seg029.ts", "seg000.ts", "seg001.ts"]
    # Once the wrapped segment heads the list, its discontinuity is counted, not tagged.
    head = live_playlist(306.0)
    assert "#EXT-X-MEDIA-SEQUENCE:150\n" in head
    assert "#EXT-X-DISCONTINUITY-SEQUENCE:5\n" in head
    assert "#EXT-X-DISCONTINUITY\n" not in head


def test_live_playlist_discontinuity_sequence_is_consistent() -> None:
    # A player keeps a segment's discontinuity number across reloads; check every slot pair.
    def numbers(now: float) -> dict[int, int]:
        text = live_playlist(now)
        seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(-?\d+)", text).group(1))  # type: ignore[union-attr]
        disc = int(re.search(r"#EXT-X-DISCONTINUITY-SEQUENCE:(\d+)", text).group(1))  # type: ignore[union-attr]
        out: dict[int, int] = {}
        k = seq
        for line in text.splitlines()[5:]:
            if line == "#EXT-X-DISCONTINUITY":
                disc += 1
            elif line.startswith("seg"):
                out[k] = disc
                k += 1
        return out

    for slot in range(1000, 1200):
        a, b = numbers(slot * 2.0), numbers(slot * 2.0 + 2.0)
        for k in a.keys() & b.keys():
            assert a[k] == b[k], f"segment {k} changed discontinuity number at slot {slot}"


@pytest.mark.integration
def test_ffmpeg_reads_live_playlist(server: FixtureServer, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "live.ts"
    subprocess.run(
        [_tool("ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", server.url(live_playlist_path(2)),
         "-t", "8", "-c", "copy", str(out)],
        check=True,
        timeout=120,
    )  # fmt: skip
    duration = subprocess.run(
        [_tool("ffprobe"), "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(out)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert 7.0 <= float(duration) <= 9.5
    kinds = sorted(str(s["codec_type"]) for s in _ffprobe_streams(out))
    assert kinds == ["audio", "video"]


@pytest.mark.integration
def test_http_flv_room_streams_live_and_its_player_is_installed(server: FixtureServer,
                                                                tmp_path: pathlib.Path) -> None:
    status, headers, body = _get(server.url("/vendor/mpegts.js"))
    assert status == 200, body[:200]  # ./scripts/setup fetched it from npm
    assert headers["Content-Type"].startswith("text/javascript") and b"mpegts" in body
    out = tmp_path / "live.flv"
    started = time.monotonic()
    subprocess.run(
        [_tool("ffmpeg"), "-v", "error", "-nostdin", "-y", "-i", server.url(flv_path(3) + "/stream.flv"),
         "-t", "4", "-c", "copy", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started > 3  # paced like a live room, not a file download
    assert sorted(str(s["codec_name"]) for s in _ffprobe_streams(out)) == ["aac", "h264"]


@pytest.mark.integration
def test_hang_load_never_finishes_and_stop_does_not_wait(server: FixtureServer) -> None:
    other = FixtureServer(server.cache_dir)
    other.start()
    port = other.bound_port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    conn.request("GET", PATH_FAIL_HANG_LOAD)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") is None
    start = resp.read1(65536).decode("utf-8")
    assert "加载" in start and "</html>" not in start
    with pytest.raises((TimeoutError, socket.timeout)):
        resp.read1(65536)
    started = time.monotonic()
    other.stop()
    assert time.monotonic() - started < 3.0
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --- time code ----------------------------------------------------------------------------


def _synthetic_frame(value: int, origin: tuple[int, int], cell: float) -> npt.NDArray[np.uint8]:
    frame = np.full((80, 720, 3), 90, dtype=np.uint8)
    draw_timecode(frame, origin, cell, value)
    return frame


@pytest.mark.parametrize("value", [0, 1, 0xA5A5A5, 12345678, TIMECODE_MODULUS - 1])
@pytest.mark.parametrize("cell", [18.0, 13.5, 20.25])
def test_timecode_round_trip_synthetic(value: int, cell: float) -> None:
    frame = _synthetic_frame(value, (7, 5), cell)
    assert decode_timecode(frame, (7, 5), cell) == value
    # Mild noise and blur, as from video compression, must not change the result.
    rng = np.random.default_rng(value)
    noisy = np.clip(frame.astype(np.int16) + rng.integers(-40, 41, frame.shape), 0, 255).astype(np.uint8)
    noisy = cv2.GaussianBlur(noisy, (3, 3), 0)
    assert decode_timecode(noisy, (7, 5), cell) == value


def test_timecode_rejects_corruption() -> None:
    value = 0x3C5A17
    frame = _synthetic_frame(value, (0, 0), 18.0)
    for cell in (0, 11, 23, 24, 31):
        bad = frame.copy()
        x0, x1 = round(cell * 18.0), round((cell + 1) * 18.0)
        bad[0:18, x0:x1] = 255 - bad[0:18, x0:x1]
        assert decode_timecode(bad, (0, 0), 18.0) is None, f"flipped cell {cell} went unnoticed"
    assert decode_timecode(frame[:, :300], (0, 0), 18.0) is None  # strip cut off
    assert decode_timecode(np.zeros((40, 700, 3), np.uint8), (0, 0), 18.0) is None  # all black


def test_timecode_bits_layout() -> None:
    bits = timecode_bits(0x800001)
    assert len(bits) == TIMECODE_CELLS
    assert bits[0] == 1 and bits[23] == 1 and sum(bits[1:23]) == 0
    check = 0x80 ^ 0x00 ^ 0x01 ^ 0xA5
    assert bits[24:] == [(check >> (7 - i)) & 1 for i in range(8)]


def test_timecode_delta_wraps() -> None:
    assert timecode_delta_ms(5, 2) == 3
    assert timecode_delta_ms(2, 5) == -3
    assert timecode_delta_ms(10, TIMECODE_MODULUS - 10) == 20
    assert timecode_delta_ms(TIMECODE_MODULUS - 10, 10) == -20
    assert timecode_from_epoch_ms(TIMECODE_MODULUS * 3 + 42.9) == 42


# --- real Chromium ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert pathlib.Path(CHROMIUM).exists(), f"{CHROMIUM} is required for these tests"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 720}, device_scale_factor=0.5)
    yield context.new_page()
    context.close()


def _screenshot(page: Page) -> npt.NDArray[np.uint8]:
    png = page.screenshot()
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, dtype=np.uint8)


@pytest.mark.integration
@pytest.mark.parametrize("path", [PATH_PRODUCT, live_path(1)])
def test_timecode_round_trip_in_chromium(server: FixtureServer, page: Page, path: str) -> None:
    page.goto(server.url(path), wait_until="load")
    page.wait_for_function("window.__wzTimecode && window.__wzTimecode.frames > 2")
    first = _screenshot(page)
    assert first.shape == (360, 640, 3)
    v1 = decode_timecode(first, (0, 0), CELL_DEVICE_PX)
    assert v1 is not None, "time code did not decode from the screenshot"
    now = timecode_from_epoch_ms(time.time() * 1000)
    assert abs(timecode_delta_ms(v1, now)) < 5000
    time.sleep(0.5)
    v2 = decode_timecode(_screenshot(page), (0, 0), CELL_DEVICE_PX)
    assert v2 is not None
    assert 300 <= timecode_delta_ms(v2, v1) <= 5000


@pytest.mark.integration
def test_live_room_plays_video_and_audio(server: FixtureServer, page: Page) -> None:
    page.goto(server.url(live_path(3)), wait_until="load")
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.currentTime > 3 && v.webkitAudioDecodedByteCount > 0; }",
        timeout=30000,
    )
    state = page.evaluate(
        "() => { const v = document.getElementById('player');"
        " return {muted: v.muted, w: v.videoWidth, h: v.videoHeight, err: v.error && v.error.code,"
        " comments: document.querySelectorAll('#comments li').length}; }"
    )
    assert state == {"muted": False, "w": 640, "h": 360, "err": None, "comments": state["comments"]}
    assert state["comments"] >= 12


@pytest.mark.integration
def test_product_page_is_tall(server: FixtureServer, page: Page) -> None:
    page.goto(server.url(PATH_PRODUCT), wait_until="load")
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height >= 4 * 720
    loaded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    assert loaded


@pytest.mark.integration
def test_fail_pages_in_chromium(server: FixtureServer, page: Page) -> None:
    response = page.goto(server.url(PATH_FAIL_404))
    assert response is not None and response.status == 404
    with pytest.raises(PlaywrightTimeoutError):
        page.goto(server.url(PATH_FAIL_HANG_LOAD), wait_until="load", timeout=3000)
    page.goto(server.url(PATH_FAIL_HANG_RENDERER), wait_until="load")
    time.sleep(2.0)
    with pytest.raises(PlaywrightTimeoutError):
        page.screenshot(timeout=3000)
