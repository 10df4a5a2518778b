"""Stored versions are told to custody in groups; a group that fails part-way is told again, and no version gets
two STORED entries in the append-only ledger (a real SeaweedFS with Object Lock, the ledger on SQLite)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from evidence import CustodyAction, PreservationRecord
from evidence.layout import load_preservation
from preservation import preserve
from preservation.preserve import Preserver
from preservation.registry import register
from preservation.services import Services
from tests.preservation.conftest import make_capture

pytestmark = pytest.mark.integration


def test_a_group_told_again_after_a_failure_appends_no_entry_twice(services: Services, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "capture"
    manifest = make_capture(directory)
    register(services.settings.registry_dir, manifest.capture_id, directory)
    real_save = preserve.save_preservation
    failed: list[int] = []

    def save_fails_once_with_versions(capture_dir: Path, record: PreservationRecord, *args: Any) -> None:
        if record.stored and not failed:  # the first save of a group of stored versions: the entries are in
            failed.append(len(record.stored))
            raise OSError("disk full")
        real_save(capture_dir, record, *args)

    monkeypatch.setattr(preserve, "save_preservation", save_fails_once_with_versions)
    first = Preserver(services).preserve(directory)
    assert failed and any("on_stored failed" in problem for problem in first.problems)
    assert Preserver(services).sync() == 0  # the same versions told again

    record = load_preservation(directory)
    stored = [e for e in services.ledger.entries(subject=manifest.capture_id) if e.action == CustodyAction.STORED]
    twice = [key for key, n in Counter((e.details["key"], e.details["version_id"]) for e in stored).items() if n > 1]
    assert twice == []
    assert {(s.key, s.version_id) for s in record.stored} == {(e.details["key"], e.details["version_id"])
                                                              for e in stored}
    assert {e.seq for e in stored} <= set(record.custody_seqs)  # the record names the entries it did not append
