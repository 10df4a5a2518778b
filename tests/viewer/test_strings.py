"""Every string the viewer shows exists in Chinese and in English (a fast test: it reads the viewer's files)."""

from __future__ import annotations

import re

from viewer import STATIC_DIR

STATES = ("lead", "opened", "closed")
ROLES = ("investigator", "case_handler", "court", "admin")
CAPTURE_STATES = ("queued", "starting", "recording", "finalizing", "preserving", "complete", "partial", "failed",
                  "interrupted")


def _languages() -> dict[str, set[str]]:
    source = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    blocks = re.findall(r"^  (\w+): \{\n(.*?)^  \},", source, flags=re.S | re.M)
    return {name: set(re.findall(r'^    "([\w.]+)":', body, flags=re.M)) for name, body in blocks}


def test_both_languages_have_every_string() -> None:
    languages = _languages()
    assert set(languages) == {"zh", "en"}
    assert languages["zh"] == languages["en"], languages["zh"] ^ languages["en"]


def test_every_string_the_viewer_asks_for_is_translated() -> None:
    keys = _languages()["zh"]
    used = set(re.findall(r'\bt\("([\w.]+)"', (STATIC_DIR / "app.js").read_text(encoding="utf-8")))
    used |= {f"state.{s}" for s in STATES} | {f"role.{r}" for r in ROLES} | {f"capture.{c}" for c in CAPTURE_STATES}
    assert used, "no t(...) call found: the pattern no longer matches app.js"
    assert used <= keys, sorted(used - keys)


def test_the_viewer_fetches_nothing_from_the_internet() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, flags=re.I), path.name
