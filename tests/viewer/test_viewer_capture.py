"""A capture launched, watched, witnessed and stopped from the viewer, against a real `wz serve` with its worker and
four demo rooms: the live state of every tile, the preview, the second officer's confirmation from their own
session, and a stop that ends in kept evidence. Then the evidence as a case handler and a court meet it: the
synchronized player (tile 2's own recording and its own tone, at the same moment), a seek by a timeline mark, the
manifest, the report PDF with its QR code, and the check for courts (a file hashed in the browser, a QR link, a
package). Screenshots go to tests/viewer/screenshots/."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from capture.fixtures import FixtureServer
from capture.fixtures.media import ROOM_TONES
from capture.fixtures.server import live_path
from storage import S3Endpoint
from tests.api.conftest import Served, serve_process
from tests.api.test_reports import _pdf_text, _qr_codes
from tests.viewer.conftest import CHROMIUM
from tests.viewer.test_viewer import (
    _no_console_errors,
    _no_overflow,
    _page,
    _shot,
    _sign_in,
    _tab_to,
    _unnamed_controls,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path, s3_server: S3Endpoint) -> Iterator[Served]:
    yield from serve_process(tmp_path / "data", s3_server, "--tiles", "4")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # The player is started by the test, not by a person's click: let it play (and sound) without one.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield launched
        launched.close()


@pytest.mark.timeout(1500)  # one long walk through everything a person does, on a real four-room recording
def test_launch_watch_witness_stop_play_report_and_verify(browser: Browser, served: Served, tmp_path: Path,
                                                           demo_server: FixtureServer) -> None:
    wang = served.add_user("wang", "investigator")
    served.add_user("li", "investigator")
    case_id = served.client.post("/cases", headers=wang, json={"title": "两个直播间"}).json()["id"]
    assert served.client.put(f"/cases/{case_id}/members/li", headers=wang,
                             json={"role": "investigator"}).status_code == 200

    page, problems = _page(browser, served)
    _sign_in(page, served, "wang")
    page.goto(f"{served.base}/#/cases/{case_id}")
    expect(page.get_by_role("heading", name="新建取证")).to_be_visible()
    # The product page's URL is long and Chinese, as a shop's search link is: nothing on any page may widen it.
    rooms = [demo_server.base_url + live_path(room) for room in (1, 2)] + \
        [demo_server.base_url + "/flv/3", demo_server.base_url + "/product?搜索=" + "某某旗舰店限时秒杀最低价" * 12]
    page.get_by_label("网址（每行一个，1-9 个）").fill("\n".join(rooms))
    page.get_by_label("第二取证人（同案调查员）").select_option("li")
    _shot(page, "new-capture-zh")
    page.get_by_role("button", name="开始取证").click()
    expect(page.get_by_role("heading", name=re.compile(r"^取证 wz-"))).to_be_visible()
    capture_id = page.url.rsplit("/", 1)[-1]

    expect(page.locator("#capture-state")).to_have_text("录制中", timeout=180_000)
    expect(page.get_by_role("img", name="多机同屏实时预览")).to_be_visible(timeout=20_000)
    page.wait_for_function("() => { const img = document.querySelector('img.preview'); "
                           "return img && img.complete && img.naturalWidth > 0; }", timeout=20_000)
    expect(page.locator("#capture-progress")).to_contain_text(re.compile(r"已录制 [1-9]\d*(\.\d)? 秒"),
                                                              timeout=20_000)
    expect(page.get_by_role("cell", name=rooms[1])).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile(r"product\?"))).to_be_visible()
    expect(page.locator("#second-officer")).to_contain_text("li（待确认）")
    # While recording, the worker reports whether the machine keeps up (the page shows it when it does not).
    keeping_up = served.client.get(f"/captures/{capture_id}", headers=wang).json()["progress"]["keeping_up"]
    assert set(keeping_up) == {"cpu_saturated_seconds", "dropping", "lowered"}, keeping_up
    expect(page.get_by_role("button", name="我作为第二取证人确认")).to_have_count(0)  # only li confirms
    _shot(page, "capture-recording-zh")

    # The second officer, in a session of their own, sees the running capture and confirms it.
    other, other_problems = _page(browser, served, "1920x1080")
    _sign_in(other, served, "li")
    other.get_by_role("button", name="English").click()
    other.goto(f"{served.base}/#/captures/{capture_id}")
    other.get_by_role("button", name="Confirm as second officer").click()
    expect(other.locator("#second-officer")).to_contain_text("li (confirmed")
    _shot(other, "capture-witnessed-en")

    page.wait_for_timeout(8_000)  # a few seconds of every room on the record before it stops
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="停止录制").click()
    expect(page.locator("#capture-state")).to_have_text(re.compile("^(完成|部分完成)$"), timeout=240_000)
    expect(page.get_by_text("清单 SHA-256")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("button", name="停止录制")).to_have_count(0)
    expect(page.locator("ol.events li").first).to_be_visible()
    assert "[object" not in page.locator("main").inner_text()
    expect(page.get_by_role("img", name="多机同屏实时预览")).to_have_count(0)  # the player replaces the live view
    # The product URL reads as Chinese wherever it is shown (the tiles' states, each tile's page facts).
    expect(page.get_by_role("cell", name=re.compile("product\\?搜索=某某旗舰店限时秒杀最低价")).first).to_be_visible()
    _shot(page, "capture-complete-zh")

    stored = served.client.get(f"/captures/{capture_id}", headers=wang).json()
    assert stored["state"] in ("complete", "partial") and stored["manifest_sha256"]
    assert stored["second_officer"]["user"] == "li" and stored["second_officer"]["confirmed_at"]
    assert "stop" in str(stored["reason"]).lower() or stored["ended_at"], stored
    _no_console_errors(other_problems)

    _play_and_switch_tiles(page, capture_id)
    _report(page, served, capture_id, stored["manifest_sha256"], tmp_path)
    _verify_as_a_court(browser, served, capture_id, stored["manifest_sha256"], tmp_path)
    _no_console_errors(problems)


VIDEO = ".player video"


def _peak_hz(page: Page) -> float:
    """The loudest frequency the player is sounding now, from the element's own audio (Web Audio)."""
    return float(page.evaluate("""async () => {
      const video = document.querySelector('.player video');
      if (!window.__listen) {
        const context = new AudioContext();
        const analyser = context.createAnalyser();
        analyser.fftSize = 8192;
        context.createMediaElementSource(video).connect(analyser);
        analyser.connect(context.destination);
        await context.resume();
        window.__listen = { context, analyser };
      }
      const { context, analyser } = window.__listen;
      // Read only after a second of this file has played: on a busy machine play() resolves before sound flows,
      // and the analyser would still hold the previous file's spectrum.
      const from = video.currentTime;
      await video.play();
      for (let waited = 0; video.currentTime - from < 1.2 && waited < 20000; waited += 100) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      const wave = new Float32Array(analyser.fftSize);
      analyser.getFloatTimeDomainData(wave);
      video.pause();
      // Silence keeps the last tone's (smoothed, fading) spectrum: a reading without sound is no reading.
      const level = Math.sqrt(wave.reduce((sum, x) => sum + x * x, 0) / wave.length);
      if (level < 0.01) return -level;
      let best = 1;
      for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      return best * context.sampleRate / analyser.fftSize;
    }"""))


def _play_and_switch_tiles(page: Page, capture_id: str) -> None:
    expect(page.get_by_role("heading", name="同步回放")).to_be_visible(timeout=30_000)
    page.wait_for_function(f"() => document.querySelector('{VIDEO}').readyState >= 1")
    assert "/artifacts/composite.mp4?ticket=" in page.evaluate(f"document.querySelector('{VIDEO}').currentSrc")
    assert page.evaluate(f"document.querySelector('{VIDEO}').muted")
    expect(page.get_by_role("cell", name="composite.mp4", exact=True)).to_be_visible()
    # The screenshots load as they scroll into view: bring each in, so the page's picture shows them.
    for shot in page.locator("figure.shot img").all():
        shot.scroll_into_view_if_needed()
    page.wait_for_function("() => Array.from(document.querySelectorAll('figure.shot img'))"
                           ".every((img) => img.complete && img.naturalWidth > 0)", timeout=30_000)
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, "capture-evidence-zh")
    _no_overflow(page)
    assert not _unnamed_controls(page), _unnamed_controls(page)

    # A seek by a timeline mark: the second segment boundary, from the list of marks (the keyboard's way).
    page.get_by_text(re.compile(r"^时间轴事件列表")).click()
    page.get_by_label("只看").select_option("segment")
    mark = page.locator("tr.row-segment td button").nth(1)
    minutes, seconds = mark.inner_text().split(":")
    mark.click()
    at = float(page.evaluate(f"document.querySelector('{VIDEO}').currentTime"))
    assert abs(at - (int(minutes) * 60 + int(seconds))) < 1.0, (mark.inner_text(), at)

    # Tile 2: its own recording and its own sound, from the same moment.
    page.locator(".tile-hit[data-tile='2']").click()
    expect(page.locator("#player-showing")).to_contain_text("画面 2")
    page.wait_for_function(f"() => document.querySelector('{VIDEO}').readyState >= 2")
    state = page.evaluate(f"(() => {{ const v = document.querySelector('{VIDEO}'); "
                          "return [v.currentSrc, v.currentTime, v.muted]; })()")
    assert "/artifacts/tiles/2/video.mp4?ticket=" in state[0] and state[2] is False, state
    assert abs(state[1] - at) < 0.5, (state, at)
    assert abs(_peak_hz(page) - ROOM_TONES[2]) < 20  # tile 2's tone, not tile 1's (the composite's first track)
    left_at = float(page.evaluate(f"document.querySelector('{VIDEO}').currentTime"))
    _shot(page, "capture-tile2-zh")
    # From the keyboard: the focus stays with the player as its buttons swap (never back to the page's start).
    expect(page.get_by_role("button", name="返回合成画面")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#player-showing")).to_contain_text("多机同屏")
    assert page.evaluate(f"document.querySelector('{VIDEO}').muted")
    expect(page.locator(".tile-hit[data-tile='2']")).to_be_focused()
    _tab_to(page, ".tile-hit[data-tile='3']", limit=1)
    page.keyboard.press("Enter")
    expect(page.locator("#player-showing")).to_contain_text("画面 3")
    page.wait_for_function(f"() => document.querySelector('{VIDEO}').readyState >= 2")
    # Switched back and on again before the composite had loaded: the player still stands where tile 2 stopped.
    assert abs(float(page.evaluate(f"document.querySelector('{VIDEO}').currentTime")) - left_at) < 0.5
    assert abs(_peak_hz(page) - ROOM_TONES[3]) < 20

    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", name="Synchronized playback")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name=re.compile(r"^Manifest \(\d+ files\)"))).to_be_visible()
    _shot(page, "capture-evidence-en")
    page.set_viewport_size({"width": 1920, "height": 1080})
    _no_overflow(page)
    _shot(page, "capture-evidence-en-1920")
    page.set_viewport_size({"width": 1366, "height": 768})
    page.get_by_role("button", name="中文").click()
    expect(page.get_by_role("heading", name="同步回放")).to_be_visible(timeout=30_000)


def _report(page: Page, served: Served, capture_id: str, manifest_sha256: str, folder: Path) -> None:
    page.get_by_role("link", name="固证报告（可打印，PDF）").click()
    expect(page.get_by_role("heading", name=f"固证报告 {capture_id}")).to_be_visible()
    expect(page.frame_locator("iframe.report-frame").get_by_text(manifest_sha256).first).to_be_visible(
        timeout=60_000)
    page.get_by_role("button", name="生成 PDF 并登记").click()
    expect(page.get_by_role("link", name="下载 PDF")).to_be_visible(timeout=120_000)
    _shot(page, "report-zh")
    assert not _unnamed_controls(page), _unnamed_controls(page)
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("link", name="Download the PDF")).to_be_visible(timeout=60_000)
    _no_overflow(page)
    _shot(page, "report-en")
    page.get_by_role("button", name="中文").click()
    reports = served.client.get(f"/captures/{capture_id}/reports", headers=served.headers["wang"]).json()
    assert len(reports) == 1
    pdf = folder / "report.pdf"
    pdf.write_bytes(served.client.get(f"/captures/{capture_id}/artifacts/{reports[0]['path']}",
                                      headers=served.headers["wang"]).content)
    assert hashlib.sha256(pdf.read_bytes()).hexdigest() == reports[0]["sha256"]
    assert manifest_sha256 in _pdf_text(pdf).replace(" ", "")
    assert _qr_codes(pdf, folder) == [f"{served.base}/#/verify?sha256={manifest_sha256}"]
    for number in range(1, 5):  # a still of the composite and of every tile: images in the PDF
        assert f"画面 {number}" in _pdf_text(pdf)


def _verify_as_a_court(browser: Browser, served: Served, capture_id: str, manifest_sha256: str,
                       folder: Path) -> None:
    court, problems = _page(browser, served)  # nobody signed in
    court.goto(f"{served.base}/#/verify?sha256={manifest_sha256}")  # the report's QR code
    expect(court.locator("#digest-result")).to_contain_text("已登记", timeout=30_000)
    expect(court.locator("#digest-result")).to_contain_text("在本浏览器中核算")
    _shot(court, "verify-qr-zh")
    assert not _unnamed_controls(court), _unnamed_controls(court)
    court.get_by_role("button", name="English").click()
    expect(court.locator("#digest-result")).to_contain_text(re.compile("comput(ed|es) in this browser"),
                                                            timeout=30_000)
    _shot(court, "verify-qr-en")
    court.get_by_role("button", name="中文").click()
    expect(court.locator("#digest-result")).to_contain_text("已登记", timeout=30_000)

    screenshot = served.client.get(f"/captures/{capture_id}/artifacts/tiles/2/screenshot-end.png",
                                   headers=served.headers["wang"]).content
    original = folder / "screenshot-end.png"
    original.write_bytes(screenshot)
    court.locator("#verify-file").set_input_files(str(original))
    expect(court.locator("#file-result")).to_contain_text("已登记", timeout=60_000)
    assert court.locator("#file-sha256").inner_text() == hashlib.sha256(screenshot).hexdigest()
    changed = folder / "changed.png"
    changed.write_bytes(screenshot[:-1] + bytes([screenshot[-1] ^ 1]))
    court.locator("#verify-file").set_input_files(str(changed))
    expect(court.locator("#file-result")).to_contain_text("未找到登记", timeout=60_000)
    _shot(court, "verify-file-zh")

    package = folder / f"{capture_id}.zip"
    package.write_bytes(served.client.get(f"/captures/{capture_id}/export", headers=served.headers["wang"]).content)
    court.get_by_role("button", name="English").click()
    court.locator("#verify-package").set_input_files(str(package))
    expect(court.locator("#package-verdict")).to_have_text(re.compile(r"^The package verifies \(\d+ checks\)$"),
                                                          timeout=180_000)
    _shot(court, "verify-package-en")
    _no_console_errors(problems)
