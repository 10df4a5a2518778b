"""A capture launched, watched, witnessed and stopped from the viewer, against a real `wz serve` with its worker and
the demo rooms: the live state of every tile, the preview, the second officer's confirmation from their own
session, and a stop that ends in kept evidence. Screenshots go to tests/viewer/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from capture.fixtures import FixtureServer
from capture.fixtures.server import live_path
from storage import S3Endpoint
from tests.api.conftest import Served, serve_process
from tests.viewer.test_viewer import CHROMIUM, _no_console_errors, _page, _shot, _sign_in

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path, s3_server: S3Endpoint) -> Iterator[Served]:
    yield from serve_process(tmp_path / "data", s3_server, "--tiles", "4")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        yield launched
        launched.close()


def test_launch_watch_witness_and_stop_a_capture(browser: Browser, served: Served,
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
    rooms = [demo_server.base_url + live_path(room) for room in (1, 2)]
    page.get_by_label("网址（每行一个，1-9 个）").fill("\n".join(rooms))
    page.get_by_label("第二取证人（同案调查员）").select_option("li")
    _shot(page, "new-capture-zh")
    page.get_by_role("button", name="开始取证").click()
    expect(page.get_by_role("heading", name=re.compile(r"^取证 wz-"))).to_be_visible()
    capture_id = page.url.rsplit("/", 1)[-1]

    expect(page.locator("#capture-state")).to_have_text("录制中", timeout=120_000)
    expect(page.get_by_role("img", name="多机同屏实时预览")).to_be_visible(timeout=20_000)
    page.wait_for_function("() => { const img = document.querySelector('img.preview'); "
                           "return img && img.complete && img.naturalWidth > 0; }", timeout=20_000)
    expect(page.locator("#capture-progress")).to_contain_text(re.compile(r"已录制 [1-9]\d*(\.\d)? 秒"),
                                                              timeout=20_000)
    expect(page.get_by_role("cell", name=rooms[1])).to_be_visible()
    expect(page.locator("#second-officer")).to_contain_text("li（待确认）")
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

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="停止录制").click()
    expect(page.locator("#capture-state")).to_have_text(re.compile("^(完成|部分完成)$"), timeout=240_000)
    expect(page.get_by_text("清单 SHA-256")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("button", name="停止录制")).to_have_count(0)
    expect(page.locator("ol.events li").first).to_be_visible()
    assert "[object" not in page.locator("main").inner_text()
    _shot(page, "capture-complete-zh")

    stored = served.client.get(f"/captures/{capture_id}", headers=wang).json()
    assert stored["state"] in ("complete", "partial") and stored["manifest_sha256"]
    assert stored["second_officer"]["user"] == "li" and stored["second_officer"]["confirmed_at"]
    assert "stop" in str(stored["reason"]).lower() or stored["ended_at"], stored
    _no_console_errors(problems)
    _no_console_errors(other_problems)
