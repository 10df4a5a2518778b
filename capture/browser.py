"""One tile: a headed Chromium window on the virtual display, driven over CDP by Playwright.

Each tile gets its own Chromium process with a fresh profile and its own PulseAudio sink, is
attached to by Playwright (`connect_over_cdp`) before it navigates, and keeps a record of what the
page did: network (HAR), console, a timeline, screenshots and DOM, TLS certificates, media URLs.
Nothing is injected into the page; the only evaluations are side-effect-free reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import (
    Browser,
    CDPSession,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    Request,
    Response,
)

from capture.har import HarRecorder
from capture.layout import WINDOW_CSS_HEIGHT, WINDOW_CSS_WIDTH, device_scale
from capture.processes import spawn, stop
from evidence import ComponentMissing, Rect, TileStatus

# Chromium draws at most 16384 device px in one go; at twice the window's scale that is 16384 CSS px of page.
MAX_SCREENSHOT_CSS_HEIGHT = 16384
MEDIA_SUFFIXES = (".m3u8", ".mpd", ".flv", ".mp4", ".m4v", ".webm")
MEDIA_TYPES = (
    "application/vnd.apple.mpegurl",
    "application/x-mpegurl",
    "audio/mpegurl",
    "application/dash+xml",
    "video/x-flv",
    "video/mp4",
    "video/webm",
)


def chromium_flags(rect: Rect, profile: Path, proxy_port: int = 0) -> list[str]:
    """The exact command-line flags of a tile's browser (recorded in the manifest)."""
    scale = device_scale(rect)
    return [
        # Every request goes through the capture's egress proxy (capture/egress.py), loopback included (Chromium
        # otherwise bypasses proxies for it), and the browser resolves no name itself: the proxy resolves each
        # host once and connects only to addresses the capture's network rule allows. WebRTC may not send UDP
        # around the proxy.
        f"--proxy-server=http://127.0.0.1:{proxy_port}",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-quic",
        # Fewer processes per tile (13 -> 5): the GPU, network and audio services run in the browser process,
        # no zygotes, no spare renderer. Each process maps ~180 MB of Chromium that summed RSS counts again;
        # at 4 tiles this took the tree from 57 processes / 4.6 GiB to 33 / 3.0 GiB, frame rate unchanged.
        "--disable-features=Translate,MediaRouter,OptimizationHints,AudioServiceOutOfProcess,"
        "SpareRendererForSitePerProcess,NetworkTimeServiceQuerying",
        # Less of the browser's own traffic beside the page's (each request of it passes the network rule too).
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--enable-features=NetworkServiceInProcess2",
        "--in-process-gpu",
        "--no-zygote",
        "--disable-session-crashed-bubble",
        "--noerrdialogs",
        "--password-store=basic",
        "--autoplay-policy=no-user-gesture-required",
        "--test-type",
        "--hide-scrollbars",
        f"--force-device-scale-factor={scale:g}",
        f"--window-size={WINDOW_CSS_WIDTH},{WINDOW_CSS_HEIGHT}",
        f"--window-position={round(rect.x / scale)},{round(rect.y / scale)}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--app=data:text/html,",
    ]


def is_media_url(url: str, content_type: str | None) -> bool:
    path = urlsplit(url).path.lower()
    if content_type and content_type.split(";")[0].strip().lower() in MEDIA_TYPES:
        return True
    return path.endswith(MEDIA_SUFFIXES)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None = None) -> str:
    return (moment or _now()).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TileFailure(Exception):
    """A tile could not be loaded or kept alive; the message is the reason recorded in the manifest."""


class TileBrowser:
    """One tile's Chromium process, its Playwright page, and the records it keeps."""

    def __init__(
        self,
        tile: int,
        url: str,
        rect: Rect,
        directory: Path,
        *,
        chromium: str,
        env: dict[str, str],
        on_media: Callable[[TileBrowser, str], None] | None = None,
        proxy_port: int,
        addresses: Callable[[str], tuple[str, ...]] = lambda _host: (),
    ) -> None:
        self.tile = tile
        self.url = url
        self.rect = rect
        self.directory = directory
        self._chromium = chromium
        self._env = env
        self._on_media = on_media
        self._profile = Path(tempfile.mkdtemp(prefix=f"wz-profile-{tile}-"))
        self.flags = chromium_flags(rect, self._profile, proxy_port)
        self._addresses = addresses  # the addresses the egress proxy pinned for a host
        self.process: subprocess.Popen[bytes] | None = None
        self.browser: Browser | None = None
        self.page: Page | None = None
        self._network: CDPSession | None = None  # asks for TLS certificates; see launch()
        self._probe: asyncio.Future[Any] | None = None  # the liveness probe still awaiting the renderer's answer
        self._probe_sent = 0.0
        self.status = TileStatus.PENDING
        self.reason = ""
        self.http_status: int | None = None
        self.final_url: str | None = None
        self.redirect_chain: list[str] = []
        self.title: str | None = None
        self.remote_ip: str | None = None
        self.user_agent: str | None = None
        self.loaded_at: datetime | None = None
        self.failed_at: datetime | None = None
        self.media_urls: list[str] = []
        self.security: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}
        self.crashed = False
        self.har = HarRecorder(creator_comment=f"tile {tile}")
        directory.mkdir(parents=True, exist_ok=True)
        self._timeline = (directory / "timeline.jsonl").open("a", encoding="utf-8")
        self._console = (directory / "console.jsonl").open("a", encoding="utf-8")

    # -- records ---------------------------------------------------------------------------------

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": _iso(), "tile": self.tile, "event": kind, **fields}
        self._timeline.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._timeline.flush()

    def fail(self, reason: str) -> None:
        if self.status != TileStatus.FAILED:
            self.status = TileStatus.FAILED
            self.reason = reason
            self.failed_at = _now()
            self.event("tile-failed", reason=reason)

    # -- launch ----------------------------------------------------------------------------------

    async def launch(self, playwright: Playwright, log: Path, timeout: float = 20.0) -> None:
        """Start Chromium on the display and attach Playwright to its (blank) app window."""
        self.process = spawn([self._chromium, *self.flags], env=self._env, log=log)
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None:
                raise ComponentMissing(f"Chromium exited at start (code {self.process.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise TileFailure(f"Chromium did not open its debugging port within {timeout:.0f} s")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.browser = await playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", timeout=timeout * 1000)
        context = self.browser.contexts[0]
        page = context.pages[0] if context.pages else await context.new_page()
        self.page = page
        self._attach(page)
        # Network.getCertificate answers only on a session whose Network domain is on and was on when the page
        # loaded (an empty list otherwise, seen with Chromium 156); zero buffers: it keeps no response bodies.
        # It is closed once the chain is read (certificates()), so its events do not flow all capture long.
        with contextlib.suppress(Error):
            session = await context.new_cdp_session(page)
            await session.send("Network.enable", {"maxTotalBufferSize": 0, "maxResourceBufferSize": 0})
            self._network = session
        self.event("browser-started", pid=self.process.pid, version=self.browser.version)

    def _attach(self, page: Page) -> None:
        page.on("request", self._on_request)
        page.on("response", self._on_response)
        page.on("requestfinished", self._on_request_finished)
        page.on("requestfailed", self._on_request_failed)
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.event("page-error", message=str(error)))
        page.on("crash", self._on_crash)
        page.on("domcontentloaded", lambda _page: self.event("domcontentloaded", url=page.url))
        page.on("load", lambda _page: self.event("load", url=page.url))
        page.on(
            "framenavigated",
            lambda frame: self.event("navigated", url=frame.url, main=frame == page.main_frame),
        )

    def _on_request(self, request: Request) -> None:
        self.har.request(request)

    def _on_response(self, response: Response) -> None:
        self.har.response(response)
        content_type = response.headers.get("content-type")
        url = response.url
        if is_media_url(url, content_type) and url not in self.media_urls:
            self.media_urls.append(url)
            self.event("media", url=url, content_type=content_type, status=response.status)
            if self._on_media is not None:
                self._on_media(self, url)

    def _on_request_finished(self, request: Request) -> None:
        self.har.finished(request)

    def _on_request_failed(self, request: Request) -> None:
        self.har.failed(request)
        self.event("request-failed", url=request.url, error=request.failure or "unknown")

    def _on_console(self, message: ConsoleMessage) -> None:
        location = message.location
        record = {"t": _iso(), "type": message.type, "text": message.text, "location": location}
        self._console.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._console.flush()

    def _on_crash(self, _page: Page) -> None:
        self.crashed = True
        self.fail("the page's renderer crashed")

    # -- load ------------------------------------------------------------------------------------

    async def load(self, timeout: float) -> None:
        """Navigate to the tile's URL and wait for its load event; failures mark the tile failed."""
        assert self.page is not None
        page = self.page
        self.status = TileStatus.LOADING
        self.event("navigate", url=self.url)
        try:
            response = await page.goto(self.url, wait_until="load", timeout=timeout * 1000)
        except Error as exc:
            message = str(exc).splitlines()[0]
            if "Timeout" in message or "timeout" in message:
                self.fail(f"page did not finish loading within {timeout:.0f} s")
            else:
                self.fail(message.removeprefix("Page.goto: "))
            self.final_url = page.url if page.url != "about:blank" else None
            return
        self.loaded_at = _now()
        self.final_url = page.url
        if response is not None:
            self.http_status = response.status
            chain = []
            previous = response.request.redirected_from
            while previous is not None:
                chain.append(previous.url)
                previous = previous.redirected_from
            self.redirect_chain = [*reversed(chain), response.url]
            # The browser talks to the egress proxy; the server's address is the one the proxy connected to.
            pinned = self._addresses(urlsplit(response.url).hostname or "")
            self.remote_ip = pinned[0] if pinned else None
            with contextlib.suppress(Error):
                details = await response.security_details()
                self.security = dict(details) if details else None
            with contextlib.suppress(Error):
                self.user_agent = await response.request.header_value("user-agent")
            if response.status >= 400:
                self.fail(f"HTTP {response.status}")
        # A renderer that hangs right after loading does not answer; the health check names it hung.
        with contextlib.suppress(Error, TimeoutError):
            self.title = await asyncio.wait_for(page.title(), 5)
        if self.status == TileStatus.LOADING:
            self.status = TileStatus.RECORDING

    def unanswered_seconds(self) -> float:
        """How long the renderer has left a liveness probe (`0`) unanswered; 0 when it answered the last one, and
        then a new one goes out. A probe is never given up on: a renderer starved of CPU by heavy streams answers
        late, and only one that does not answer for long is hung (an error is an answer: the renderer is alive)."""
        if self.page is None or self.crashed:
            return math.inf
        now = time.monotonic()
        if self._probe is not None and not self._probe.done():
            return now - self._probe_sent
        if self._probe is not None and not self._probe.cancelled():
            self._probe.exception()  # an error answers too; fetched so it is not reported as never retrieved
        self._probe = asyncio.ensure_future(self.page.evaluate("0"))
        self._probe_sent = now
        return 0.0

    # -- page artifacts --------------------------------------------------------------------------

    async def snapshot(self, label: str, timeout: float = 15.0) -> list[str]:
        """Full-page screenshot and DOM; returns the problems met (empty when all went well)."""
        problems: list[str] = []
        if self.page is None or self.crashed:
            return [f"{label} snapshot skipped: no live page"]
        page = self.page
        path = str(self.directory / f"screenshot-{label}.png")
        # DevTools redraws the window at the screenshot's scale while it draws the full page (about half a second
        # on an idle machine): the recording shows it, and the timeline says when, from here to "snapshot".
        self.event("snapshot-started", label=label)
        try:
            await asyncio.wait_for(self._legible_screenshot(Path(path), problems), timeout)
        except (TimeoutError, Error, KeyError, ValueError) as exc:
            problem = f"{label} full-page screenshot failed: {str(exc).splitlines()[0] if str(exc) else 'timeout'}"
            # A busy machine can miss the full-page deadline; the window alone is cheaper and still evidence.
            try:
                await asyncio.wait_for(page.screenshot(path=path, timeout=timeout * 1000), timeout + 1)
                problems.append(problem + "; the visible window was kept instead")
            except (TimeoutError, Error) as second:
                problems.append(problem + f"; the visible window failed too: "
                                f"{str(second).splitlines()[0] if str(second) else 'timeout'}")
        try:
            html = await asyncio.wait_for(page.content(), timeout)
            (self.directory / f"dom-{label}.html").write_text(html, encoding="utf-8")
        except (TimeoutError, Error) as exc:
            problems.append(f"{label} DOM failed: {str(exc).splitlines()[0] if str(exc) else 'timeout'}")
        self.event("snapshot", label=label, problems=problems)
        return problems

    async def _legible_screenshot(self, path: Path, problems: list[str]) -> None:
        """The whole page at its own CSS resolution (a 1280 px layout gives a 1280 px wide picture, so 12 px
        text stays 12 px), while the window keeps showing and recording it at the tile's scale: DevTools draws
        the page beyond the viewport at a clip scale that undoes the window's device scale."""
        assert self.page is not None
        session = await self.page.context.new_cdp_session(self.page)
        try:
            metrics = await session.send("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            width = max(1, math.ceil(size["width"]))
            height = max(1, math.ceil(size["height"]))
            if height > MAX_SCREENSHOT_CSS_HEIGHT:
                problems.append(f"the page is {height} CSS px tall; the screenshot keeps its first "
                                f"{MAX_SCREENSHOT_CSS_HEIGHT} px")
                height = MAX_SCREENSHOT_CSS_HEIGHT
            shot = await session.send("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True, "fromSurface": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1 / device_scale(self.rect)},
            })
        finally:
            with contextlib.suppress(Error):
                await session.detach()
        path.write_bytes(base64.b64decode(shot["data"]))

    async def video_counters(self, timeout: float = 5.0) -> tuple[int, int] | None:
        """Read-only: (decoded, dropped) video frames summed over the page's video elements, as the browser
        counts them ((0, 0) on a page without video); None without a live page or without an answer in time."""
        if self.page is None or self.crashed:
            return None
        try:
            stats = await asyncio.wait_for(
                self.page.evaluate(
                    "Array.from(document.querySelectorAll('video')).map(v => { const q ="
                    " v.getVideoPlaybackQuality(); return [q.totalVideoFrames, q.droppedVideoFrames]; })"
                ),
                timeout,
            )
            total = sum(int(item[0]) for item in stats)
            dropped = sum(int(item[1]) for item in stats)
        except (TimeoutError, Error, TypeError, ValueError, IndexError):
            return None
        return total, dropped

    async def playback_quality(self) -> None:
        """The video counters at the end of the recording, kept in the tile's metrics."""
        counters = await self.video_counters()
        if counters is not None and counters[0]:
            total, dropped = counters
            self.metrics["video_frames_total"] = float(total)
            self.metrics["video_frames_dropped"] = float(dropped)
            self.metrics["video_dropped_share"] = dropped / total

    async def certificates(self) -> str | None:
        """The TLS chain (PEM) for an https tile: from the browser if it tells, else a fresh handshake."""
        try:
            return await self._certificates()
        finally:
            await self.close_network()

    async def close_network(self) -> None:
        """Detach the CDP session kept for the certificate chain."""
        network, self._network = self._network, None
        if network is not None:
            with contextlib.suppress(Error, TimeoutError):
                await asyncio.wait_for(network.detach(), 5)

    async def _certificates(self) -> str | None:
        target = self.final_url or self.url
        parts = urlsplit(target)
        if parts.scheme != "https" or not parts.hostname:
            return None
        pem = ""
        source = ""
        if self._network is not None and not self.crashed:
            with contextlib.suppress(Error, TimeoutError, KeyError):
                origin = f"{parts.scheme}://{parts.netloc}"
                request = self._network.send("Network.getCertificate", {"origin": origin})
                result = await asyncio.wait_for(request, 10)
                ders = [base64.b64decode(item) for item in result["tableNames"]]
                pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in ders)
                source = "the browser's own connection (CDP Network.getCertificate)"
        pinned = self._addresses(parts.hostname)
        if not pem and pinned:
            # To the address the proxy checked and used, never to a fresh lookup of the name.
            pem = await asyncio.to_thread(_handshake_chain, parts.hostname, pinned[0], parts.port or 443)
            source = "a separate TLS handshake by Wangzheng (openssl s_client) right after the page loaded"
        if not pem:
            return None
        path = self.directory / "certificates.pem"
        path.write_text(f"# TLS certificate chain of {parts.hostname}, from {source}\n{pem}", encoding="ascii")
        self.event("certificates", host=parts.hostname, source=source)
        return source

    def write_page_info(self) -> None:
        info = {
            "tile": self.tile,
            "requested_url": self.url,
            "final_url": self.final_url,
            "redirect_chain": self.redirect_chain,
            "title": self.title,
            "http_status": self.http_status,
            "remote_ip": self.remote_ip,
            "user_agent": self.user_agent,
            "security_details": self.security,
            "status": self.status.value,
            "reason": self.reason,
            "loaded_at": _iso(self.loaded_at) if self.loaded_at else None,
            "failed_at": _iso(self.failed_at) if self.failed_at else None,
            "media_urls": self.media_urls,
            "metrics": self.metrics,
            "chromium_flags": self.flags,
        }
        (self.directory / "page.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")

    def write_har(self, browser_version: str) -> None:
        self.har.write(self.directory / "network.har", browser_version=browser_version, page_url=self.url)

    async def cookie_header(self, url: str) -> str:
        if self.page is None:
            return ""
        with contextlib.suppress(Error):
            cookies = await self.page.context.cookies(url)
            return "; ".join(f"{c['name']}={c['value']}" for c in cookies)
        return ""

    # -- shutdown --------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        if self.browser is not None:
            with contextlib.suppress(Error, TimeoutError):
                await asyncio.wait_for(self.browser.close(), 5)
            self.browser = None
        if self.process is not None:
            await asyncio.to_thread(stop, self.process, grace=5)
            self.process = None
        self._timeline.close()
        self._console.close()
        shutil.rmtree(self._profile, ignore_errors=True)


def _handshake_chain(host: str, address: str, port: int) -> str:
    connect = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        result = subprocess.run(
            ["openssl", "s_client", "-showcerts", "-servername", host, "-connect", connect],
            input=b"",
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = result.stdout.decode("ascii", "replace")
    blocks = []
    inside = False
    for line in text.splitlines():
        if line.startswith("-----BEGIN CERTIFICATE-----"):
            inside = True
            blocks.append(line)
        elif inside:
            blocks.append(line)
            if line.startswith("-----END CERTIFICATE-----"):
                inside = False
    return "\n".join(blocks) + ("\n" if blocks else "")
