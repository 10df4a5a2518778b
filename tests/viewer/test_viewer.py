"""The web viewer in the system Chromium against a real `wz serve`: sign in, the language switch, cases (list,
search, create), a case page, roles, hostile titles. Every page is written as a screenshot, in both languages,
under tests/viewer/screenshots/ (named in the README) for a person to look at."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect

from storage import S3Endpoint
from tests.api.conftest import PASSWORD, Served, serve_process

pytestmark = pytest.mark.integration

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
SIZES: dict[str, ViewportSize] = {"1366x768": {"width": 1366, "height": 768},
                                  "1920x1080": {"width": 1920, "height": 1080}}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Endpoint) -> Iterator[Served]:
    yield from serve_process(tmp_path_factory.mktemp("viewer") / "data", s3_server, "--no-worker")


def _page(browser: Browser, served: Served, size: str = "1366x768") -> tuple[Page, list[str]]:
    context = browser.new_context(viewport=SIZES[size], locale="zh-CN")
    # Offline: nothing outside the service may be fetched (no CDN, no web fonts).
    context.route(re.compile(r"^(?!" + re.escape(served.base) + ").*"),
                  lambda route: route.abort())
    page = context.new_page()
    problems: list[str] = []
    # "Failed to load resource: ... 404" says which request only in its location.
    page.on("console", lambda message: problems.append(f"{message.text} ({message.location.get('url', '?')})")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    # A progress stream the page itself closes (leaving the page, or reconnecting) and a player's range request
    # it no longer needs (a seek, another tile's file) end as net::ERR_ABORTED; any other failed request is a
    # problem.
    page.on("requestfailed", lambda request: None if "ERR_ABORTED" in (request.failure or "") and (
        request.url.endswith("/events") or request.resource_type == "media") else problems.append(
            f"request failed: {request.url} ({request.failure})"))
    return page, problems


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _sign_in(page: Page, served: Served, name: str) -> None:
    page.goto(served.base + "/")
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    page.get_by_label("用户名").fill(name)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    # Generous: a password check (argon2) waits its turn on two cores busy recording four rooms.
    expect(page.get_by_role("heading", name="案件", exact=True)).to_be_visible(timeout=30_000)


def _no_console_errors(problems: list[str]) -> None:
    # A 401 the viewer handles (a wrong password) is the browser's console line, not the viewer's error.
    real = [p for p in problems if "401" not in p]
    assert not real, real


def test_sign_in_switch_language_create_and_open_a_case(browser: Browser, served: Served) -> None:
    served.add_user("wang", "investigator")
    page, problems = _page(browser, served)
    page.goto(served.base + "/")
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    _shot(page, "signin-zh")
    page.get_by_label("用户名").fill("wang")
    page.get_by_label("密码").fill("not the password")
    page.get_by_role("button", name="登录").click()
    expect(page.get_by_role("alert")).to_contain_text("登录失败")

    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    _shot(page, "signin-en")
    page.get_by_label("User name").fill("wang")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Cases", exact=True)).to_be_visible()
    expect(page.get_by_text("No cases yet.")).to_be_visible()

    long_title = "直播间虚构原价案 " + "某某旗舰店限时秒杀最低价" * 12
    page.get_by_label("Case title").fill(long_title)
    page.get_by_label("Reference (optional)").fill("西市监立〔2026〕88号")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Case C-\d{8}-[0-9a-f]{6}"))).to_be_visible()
    expect(page.get_by_text("Lead", exact=True)).to_be_visible()
    expect(page.get_by_text("No captures yet.")).to_be_visible()
    case_url = page.url
    _shot(page, "case-en")
    _no_overflow(page)

    page.get_by_role("button", name="中文").click()  # remembered: the next visit opens in Chinese
    expect(page.get_by_role("heading", name=re.compile(r"^案件 C-"))).to_be_visible()
    expect(page.get_by_text("线索", exact=True)).to_be_visible()
    _shot(page, "case-zh")
    page.reload()
    expect(page.get_by_text("法律保全")).to_be_visible()

    page.get_by_role("link", name="案件", exact=True).click()
    expect(page.get_by_role("cell", name=long_title)).to_be_visible()
    page.get_by_label("搜索案件（编号、标题、文号）").fill("88号")
    expect(page.get_by_role("cell", name=long_title)).to_be_visible()
    _shot(page, "cases-zh")
    page.get_by_label("搜索案件（编号、标题、文号）").fill("没有这个")
    expect(page.get_by_text("没有符合条件的案件。")).to_be_visible()
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", name="Cases", exact=True)).to_be_visible()
    _shot(page, "cases-en")
    assert page.url.split("#")[0] + "#/cases/" in case_url
    _no_console_errors(problems)


def _no_overflow(page: Page) -> None:
    """No layout break: long Chinese titles wrap rather than widen the page."""
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.viewport_size
    assert viewport is not None and width <= viewport["width"], (width, viewport)


def test_what_a_role_may_not_do_is_not_shown(browser: Browser, served: Served) -> None:
    served.add_user("judge", "court")
    page, problems = _page(browser, served, "1920x1080")
    _sign_in(page, served, "judge")
    expect(page.get_by_role("heading", name="新建案件")).to_have_count(0)
    expect(page.get_by_text("法院")).to_be_visible()
    _shot(page, "cases-court-zh")
    _no_console_errors(problems)


def test_a_hostile_title_is_text_and_unknown_api_paths_stay_problems(browser: Browser, served: Served) -> None:
    served.add_user("li", "investigator")
    headers = served.headers["li"]
    hostile = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
    made = served.client.post("/cases", headers=headers, json={"title": hostile})
    assert made.status_code == 201, made.text
    page, problems = _page(browser, served)
    _sign_in(page, served, "li")
    expect(page.get_by_role("cell", name=hostile)).to_be_visible()
    page.goto(page.url.split("#")[0] + f"#/cases/{made.json()['id']}")
    expect(page.get_by_role("heading", name=re.compile("^案件 C-"))).to_contain_text("<script>")
    assert page.title() != "pwned"
    assert page.evaluate("document.querySelectorAll('main img, main script').length") == 0
    page.goto(page.url.split("#")[0] + "#/cases/C-20990101-abcdef")
    expect(page.get_by_role("heading", name="找不到该页面或案件。")).to_be_visible()
    _no_console_errors([p for p in problems if "404" not in p])

    root = served.base
    with pytest.raises(urllib.error.HTTPError) as unknown:
        urllib.request.urlopen(served.base + "/api/v1/no-such-thing")
    assert unknown.value.code == 404
    assert unknown.value.headers["content-type"] == "application/problem+json"
    with urllib.request.urlopen(root + "/") as index:
        assert "text/html" in index.headers["content-type"]
        page_text = index.read().decode()
    assert "https://" not in page_text and "http://" not in page_text, "nothing is fetched from the internet"


def test_the_browser_checks_a_custody_proof_and_refuses_forged_ones(browser: Browser, served: Served) -> None:
    """The check for courts computes the RFC 9162 inclusion proof in the page: a genuine proof from the log
    holds; a leaf outside the tree, a changed path, a wrong root and hashes that are not hashes do not."""
    served.add_user("proof-maker", "investigator")
    for number in range(33):  # a checkpoint is signed every 32 entries: entries enough for one
        assert served.client.post("/cases", headers=served.headers["proof-maker"],
                                  json={"title": f"proof {number}"}).status_code == 201
    size = 0
    for _ in range(60):
        size = served.client.get("/log/checkpoint").json()["tree_size"]
        if size >= 2:
            break
        time.sleep(1)
    assert size >= 2, "no checkpoint over two entries"
    proof = served.client.get(f"/log/proof/inclusion?index=2&tree_size={size}").json()
    page, problems = _page(browser, served)
    page.goto(served.base + "/#/verify")
    expect(page.get_by_role("heading", name="核验电子证据")).to_be_visible()
    flip = "0" if proof["root"][0] != "0" else "1"
    forged = {
        "genuine": proof,
        "leaf outside the tree": proof | {"leaf_index": size},
        "index far outside": proof | {"leaf_index": size + 7},
        "another root": proof | {"root": flip + proof["root"][1:]},
        "a path one node short": proof | {"path": proof["path"][:-1]} if proof["path"] else proof | {"tree_size": 0},
        "not hexadecimal": proof | {"leaf_hash": "zz" * 32},
        "too short": proof | {"root": proof["root"][:62]},
    }
    verdicts = page.evaluate("""async (proofs) => {
      const { inclusionHolds } = await import("/viewer/verify.js");
      const out = {};
      for (const [name, proof] of Object.entries(proofs)) out[name] = await inclusionHolds(proof);
      return out;
    }""", forged)
    assert verdicts.pop("genuine") is True
    assert verdicts == dict.fromkeys(verdicts, False), verdicts
    _no_console_errors(problems)


def _tab_to(page: Page, selector: str, limit: int = 80) -> None:
    """Press Tab until the element matching `selector` has the focus: it is reachable from the keyboard."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement !== null && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} not reached with {limit} presses of Tab")


def _unnamed_controls(page: Page) -> list[str]:
    """Controls a screen reader would announce without a name: inputs without a label, empty buttons and links."""
    found: list[str] = page.evaluate("""() => Array.from(document.querySelectorAll(
        'input:not([type=hidden]), select, textarea, button, a[href]')).filter((el) => {
      if (el.closest('[hidden]') || el.getClientRects().length === 0) return false;
      const labelled = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') ||
        (el.labels && el.labels.length) || el.getAttribute('title');
      if (['INPUT', 'SELECT', 'TEXTAREA'].includes(el.tagName)) return !labelled;
      const imageNamed = Array.from(el.querySelectorAll('img')).some((img) => (img.alt || '').trim());
      return !labelled && !el.textContent.trim() && !imageNamed;
    }).map((el) => el.outerHTML.slice(0, 120))""")
    return found


def test_the_keyboard_alone_signs_in_creates_and_opens_a_case(browser: Browser, served: Served) -> None:
    served.add_user("zhao", "investigator")
    page, problems = _page(browser, served)
    page.goto(served.base + "/")
    expect(page.get_by_role("heading", name="登录")).to_be_visible()
    assert page.evaluate("document.activeElement.name") == "username"  # the form starts where the typing does
    assert not _unnamed_controls(page)
    page.keyboard.type("zhao")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="案件", exact=True)).to_be_visible(timeout=30_000)
    assert not _unnamed_controls(page), _unnamed_controls(page)

    # The first Tab of a page offers a way past the bar, and it leads to the page.
    page.reload()
    expect(page.get_by_role("heading", name="案件", exact=True)).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator("#skip")).to_be_focused()
    expect(page.locator("#skip")).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("#app")).to_be_focused()

    _tab_to(page, "input[name=title]")
    page.keyboard.type("键盘建案")
    _tab_to(page, "form button.primary")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(r"^案件 C-"))).to_be_visible()
    # The new page has the focus, so the next Tab starts at its top, not at a link that is gone.
    assert page.evaluate("document.getElementById('app').contains(document.activeElement)")
    assert not _unnamed_controls(page), _unnamed_controls(page)

    _tab_to(page, "button[data-lang=en]")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(r"^Case C-"))).to_be_visible()
    _tab_to(page, "#nav a[href='#/cases']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Cases", exact=True)).to_be_visible()
    _tab_to(page, "td.id a")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(r"^Case C-"))).to_be_visible()
    _tab_to(page, "#nav a[href='#/verify']")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Verify evidence")).to_be_visible()
    assert not _unnamed_controls(page), _unnamed_controls(page)
    _no_console_errors(problems)


def test_urls_read_as_text_yet_hide_nothing(browser: Browser, served: Served) -> None:
    """A percent-escaped Chinese search term reads as Chinese; what could hide or reorder the text a person reads
    (a right-to-left override, a zero-width space, a line break, an escaped percent sign) stays escaped."""
    page, problems = _page(browser, served)
    page.goto(served.base + "/#/verify")
    expect(page.get_by_role("heading", name="核验电子证据")).to_be_visible()
    cases = {
        "https://shop.example/p?q=%E6%9C%80%E4%BD%8E%E4%BB%B7": "https://shop.example/p?q=最低价",
        "https://shop.example/%E2%80%AEgpj.exe": "https://shop.example/%E2%80%AEgpj.exe",  # RLO
        "https://shop.example/a%E2%80%8Bb": "https://shop.example/a%E2%80%8Bb",  # zero-width space
        "https://shop.example/a%0Ab%20c": "https://shop.example/a%0Ab%20c",
        "https://shop.example/%2541": "https://shop.example/%2541",  # not "%41", which reads as "A"
        "https://shop.example/a%2Fb%3Fc%23d": "https://shop.example/a%2Fb%3Fc%23d",  # reserved: no new path or query
        "https://shop.example/%E6%9C": "https://shop.example/%E6%9C",  # a broken escape: shown exactly
        "https://xn--fiqs8s.example/": "https://xn--fiqs8s.example/",  # the host keeps its punycode
    }
    shown = page.evaluate("""async (urls) => {
      const { readableUrl } = await import("/viewer/common.js");
      return urls.map((url) => readableUrl(url));
    }""", list(cases))
    assert dict(zip(cases, shown, strict=True)) == cases
    _no_console_errors(problems)


def test_a_machine_that_cannot_keep_up_is_said_in_both_languages(browser: Browser, served: Served) -> None:
    page, problems = _page(browser, served)
    page.goto(served.base + "/#/verify")
    expect(page.get_by_role("heading", name="核验电子证据")).to_be_visible()
    said = page.evaluate("""async () => {
      const { behindLine } = await import("/viewer/evidence.js");
      const { setLanguage } = await import("/viewer/i18n.js");
      const state = { cpu_saturated_seconds: 3, dropping: { "6": 0.19 } };
      const zh = behindLine(state).textContent;
      setLanguage("en");
      const en = behindLine(state).textContent;
      setLanguage("zh");
      return [zh, en, behindLine({ cpu_saturated_seconds: 0, dropping: {} }), behindLine(null)];
    }""")
    assert said[0] == ("本机跟不上录制：所有 CPU 核心已满载 3 秒；画面 6 的浏览器丢帧 19%。"
                       "录像仍在继续，清单会记下降级的时段。")
    assert said[1].startswith("This machine is not keeping up: every CPU core busy for 3 s; tile 6's browser")
    assert said[2] is None and said[3] is None  # keeping up, or not recording: nothing said
    _no_console_errors(problems)
