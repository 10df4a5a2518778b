"""Every string the viewer shows exists in Chinese and in English (a fast test: it reads the viewer's files)."""

from __future__ import annotations

import re

from evidence import CustodyAction
from evidence.model import ArtifactRole, DegradedCause, StepName, StepOutcome, SyncVerdict, TileStatus
from service.report import REPORT_LABELS
from viewer import STATIC_DIR

STATES = ("lead", "opened", "closed")
ROLES = ("investigator", "case_handler", "court", "admin")
CAPTURE_STATES = ("queued", "starting", "recording", "finalizing", "preserving", "complete", "partial", "failed",
                  "interrupted")
PHASES = ("starting", "recording", "finalizing", "done")
MARK_KINDS = ("page", "media", "error", "segment", "timestamp", "custody")


def _languages() -> dict[str, set[str]]:
    source = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    blocks = re.findall(r"^  (\w+): \{\n(.*?)^  \},", source, flags=re.S | re.M)
    return {name: set(re.findall(r'^    "([\w.-]+)":', body, flags=re.M)) for name, body in blocks}


def _scripts() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(STATIC_DIR.glob("*.js"))
                     if path.name != "i18n.js")


def test_both_languages_have_every_string() -> None:
    languages = _languages()
    assert set(languages) == {"zh", "en"}
    assert languages["zh"] == languages["en"], languages["zh"] ^ languages["en"]


def test_every_string_the_viewer_asks_for_is_translated() -> None:
    keys = _languages()["zh"]
    namespaces = {key.split(".")[0] for key in keys}
    scripts = _scripts()
    used = set(re.findall(r'\bt\("([\w.-]+)"', scripts))
    # Keys handed around before t() is called on them (table headers, a chosen message): every literal that
    # looks like a key of a known namespace.
    used |= {literal for literal in re.findall(r'"([a-z_]+\.[\w.-]+)"', scripts) if literal.split(".")[0] in namespaces
             and not literal.endswith((".js", ".json", ".csv", ".mp4", ".png", ".zip", ".p7s", ".pdf"))}
    # Keys made from what the server sends: every value it can send.
    used |= {f"state.{s}" for s in STATES} | {f"role.{r}" for r in ROLES} | {f"capture.{c}" for c in CAPTURE_STATES}
    used |= {f"phase.{p}" for p in PHASES} | {f"mark.kind.{k}" for k in MARK_KINDS}
    used |= {f"action.{a.value}" for a in CustodyAction} | {f"tile.{s.value}" for s in TileStatus}
    used |= {f"quality.verdict.{v.value}" for v in SyncVerdict} | {f"quality.cause.{c.value}" for c in DegradedCause}
    # The evidence index's roles: every manifest role, and the files preservation adds (service/index.py).
    used |= {f"artifact.{r.value}" for r in ArtifactRole} | {f"artifact.{role}" for role in (
        "report", "manifest", "signature", "timestamp-request", "timestamp", "certificate", "record")}
    used |= {f"step.{s.value}" for s in StepName} | {f"outcome.{o.value}" for o in StepOutcome}
    assert len(used) > 100, "the patterns no longer find the viewer's strings"
    assert used <= keys, sorted(used - keys)


def test_the_mark_kinds_the_player_draws_are_the_ones_translated() -> None:
    kinds = re.search(r"export const MARK_KINDS = \[(.*?)\];", (STATIC_DIR / "evidence.js").read_text(encoding="utf-8"))
    assert kinds is not None
    assert tuple(re.findall(r'"(\w+)"', kinds.group(1))) == MARK_KINDS


def test_the_viewer_fetches_nothing_from_the_internet() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        # The SVG icon names its XML namespace, which is never fetched.
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, flags=re.I), path.name


def test_the_report_says_values_as_the_viewer_does() -> None:
    """The printed report's Chinese words for states and roles are the viewer's own, not a second translation."""
    source = (STATIC_DIR / "i18n.js").read_text(encoding="utf-8")
    zh_block = re.search(r"^  zh: \{\n(.*?)^  \},", source, flags=re.S | re.M)
    assert zh_block
    viewer_zh = dict(re.findall(r'^    "([\w.-]+)": "(.*)",$', zh_block.group(1), flags=re.M))
    assert REPORT_LABELS
    for key, word in REPORT_LABELS.items():
        assert viewer_zh.get(key) == word, (key, word, viewer_zh.get(key))
    assert {f"tile.{s.value}" for s in TileStatus} <= set(REPORT_LABELS)
    assert {f"role.{r}" for r in ROLES} <= set(REPORT_LABELS)
    assert {f"action.{a.value}" for a in CustodyAction} <= set(REPORT_LABELS)
