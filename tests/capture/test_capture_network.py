"""What a captured page (or the stream copier working for it) may reach, tried with real Chromium and ffmpeg.

Only 127.0.0.2 is allowlisted; the 'internal service' a hostile page aims at listens on 127.0.0.1 and must never
see a request: not from a redirect, a subresource, a script, a stream copy, or a name that rebinds.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from capture.job import CaptureJob
from evidence import CaptureRequest, Settings, TileStatus
from evidence.layout import load_manifest
from storage import S3Endpoint
from tests.capture.netfixtures import RecordingServer, html
from tests.conftest import base_env, wz

pytestmark = pytest.mark.integration

ALLOW_TWO = {"WZ_CAPTURE_ALLOW_PRIVATE": "0", "WZ_CAPTURE_ALLOW_NETWORKS": "127.0.0.2/32"}


def _timeline(directory: Path, tile: int) -> list[dict[str, Any]]:
    lines = (directory / "tiles" / str(tile) / "timeline.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _refused(directory: Path, tile: int) -> list[str]:
    return [str(e["target"]) for e in _timeline(directory, tile) if e["event"] == "request-refused"]


@pytest.fixture
def internal() -> Any:
    """The service a hostile page wants to reach: on loopback, never allowlisted."""
    with RecordingServer("127.0.0.1", {"/admin": html("internal admin"), "/pixel.png": html("x"),
                                       "/api": html("{}"), "/seg0.ts": (200, {}, b"\x47" * 188)}) as server:
        yield server


def test_a_redirect_to_loopback_is_refused_and_named(internal: RecordingServer, s3_server: S3Endpoint,
                                                      tmp_path: Path) -> None:
    with RecordingServer("127.0.0.2", {"/go": (302, {"Location": f"{internal.origin}/admin"}, b"")}) as shop:
        env = base_env(tmp_path / "data", s3_server) | ALLOW_TWO
        result = wz(["capture", f"{shop.origin}/go", "--duration", "4", "--out", str(tmp_path / "c"), "--json"],
                    env)
    assert result.returncode == 1, result.stderr[-3000:]  # the only tile failed: nothing was captured
    manifest = load_manifest(tmp_path / "c")
    [tile] = manifest.tiles
    assert tile.status == TileStatus.FAILED
    assert "refused by the capture's network rule" in tile.reason and "127.0.0.1" in tile.reason, tile.reason
    assert internal.seen == [] and shop.paths() == ["/go"]
    assert any("/admin" in target for target in _refused(tmp_path / "c", 1))


def test_subresources_scripts_and_frames_on_private_addresses_are_refused(
        internal: RecordingServer, s3_server: S3Endpoint, tmp_path: Path) -> None:
    page = html(f"""<!doctype html><title>shop</title><h1>商品 ¥199</h1>
        <img src="{internal.origin}/pixel.png"><iframe src="{internal.origin}/admin"></iframe>
        <script>fetch("{internal.origin}/api").catch(() => {{}});</script>""")
    with RecordingServer("127.0.0.2", {"/item": page}) as shop:
        env = base_env(tmp_path / "data", s3_server) | ALLOW_TWO
        result = wz(["capture", f"{shop.origin}/item", "--duration", "5", "--out", str(tmp_path / "c"), "--json"],
                    env)
    assert result.returncode in (0, 4), result.stderr[-3000:]
    manifest = load_manifest(tmp_path / "c")
    assert manifest.tiles[0].status == TileStatus.COMPLETE and manifest.tiles[0].title == "shop"
    assert internal.seen == []
    refused = _refused(tmp_path / "c", 1)
    for path in ("/pixel.png", "/admin", "/api"):
        assert any(target.endswith(path) for target in refused), refused
    network = manifest.provenance.options["network"]
    assert network["allowlisted_networks"] == ["127.0.0.2/32"] and network["all_private_addresses"] is False
    assert manifest.provenance.dns["127.0.0.2"] == ("127.0.0.2",)


def test_the_stream_copier_reaches_only_what_the_page_may(internal: RecordingServer, s3_server: S3Endpoint,
                                                          tmp_path: Path) -> None:
    """The playlist is on the allowed host, its segments on loopback: neither Chromium nor ffmpeg fetches them."""
    playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n"
                f"#EXTINF:2.0,\n{internal.origin}/seg0.ts\n#EXTINF:2.0,\n{internal.origin}/seg0.ts?1\n"
                "#EXT-X-ENDLIST\n").encode()
    with RecordingServer("127.0.0.2", {}) as shop:
        shop.routes["/live.m3u8"] = (200, {"Content-Type": "application/vnd.apple.mpegurl"}, playlist)
        shop.routes["/room"] = html(f'<video src="{shop.origin}/live.m3u8" autoplay muted></video>')
        # A machine whose no_proxy lists local addresses: ffmpeg would then go around -http_proxy by itself.
        env = base_env(tmp_path / "data", s3_server) | ALLOW_TWO | {"no_proxy": "127.0.0.1,127.0.0.2,localhost",
                                                                     "NO_PROXY": "127.0.0.1,127.0.0.2,localhost"}
        result = wz(["capture", f"{shop.origin}/room", "--duration", "8", "--out", str(tmp_path / "c"), "--json"],
                    env)
        fetched = shop.paths()
    assert result.returncode in (0, 4), result.stderr[-3000:]
    events = _timeline(tmp_path / "c", 1)
    assert any(e["event"] == "stream-copy-started" for e in events), events
    assert fetched.count("/live.m3u8") >= 2  # the page's player and the stream copy both read the playlist
    assert internal.seen == []
    assert any("seg0.ts" in target for target in _refused(tmp_path / "c", 1))


def test_a_name_that_rebinds_to_loopback_never_reaches_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shop.test first resolves to the allowed 127.0.0.2, then (as a rebinding DNS server would answer) to
    127.0.0.1 on the same port. The capture resolves each name once and the browser never resolves it itself."""
    lookups: list[str] = []

    def rebinding(host: str) -> Sequence[str]:
        lookups.append(host)
        if host != "shop.test":
            raise OSError(f"{host}: Name or service not known")
        return ["127.0.0.2"] if len(lookups) == 1 else ["127.0.0.1"]

    with RecordingServer("127.0.0.2", {}) as shop, \
            RecordingServer("127.0.0.1", {"/": html("x"), "/item": html("x"), "/again.png": html("x")},
                            port=shop.port) as local:
        base = f"http://shop.test:{shop.port}"
        shop.routes["/item"] = html(f'<title>shop</title><img src="{base}/again.png">'
                                    f'<script>setTimeout(() => fetch("{base}/later"), 1500)</script>')
        for name, value in {"WZ_DATA_DIR": str(tmp_path / "data"), "WZ_NTP_TIMEOUT_SECONDS": "1",
                            **ALLOW_TWO}.items():
            monkeypatch.setenv(name, value)
        request = CaptureRequest(urls=(f"{base}/item",), duration_seconds=5, out_dir=str(tmp_path / "c"))
        job = CaptureJob(request, Settings(), resolver=rebinding)
        manifest = asyncio.run(job.run())
    assert manifest.tiles[0].status == TileStatus.COMPLETE, manifest.tiles[0].reason
    assert lookups.count("shop.test") == 1  # (Chromium's own background hosts are looked up, and refused, too)
    assert local.seen == []
    assert {"/item", "/again.png", "/later"} <= set(shop.paths())
    assert manifest.provenance.dns == {"shop.test": ("127.0.0.2",)}
    assert os.path.exists(tmp_path / "c" / "composite.mp4")
