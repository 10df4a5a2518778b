"""Several hosts of one node share its custody ledger (the service and workers on other hosts): they must sign it
with the node's keys, or checkpoints signed by a stranger's key would sit in the ledger and the public log would
hand courts a certificate that does not verify them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from evidence import ConfigurationError, CustodyAction, Settings
from preservation.services import Services
from tests.preservation.conftest import store_down_env


def _host(data_dir: Path, ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> Services:
    for name in [k for k in os.environ if k.startswith("WZ_")]:
        monkeypatch.delenv(name)
    for name, value in {**store_down_env(data_dir), "WZ_DATABASE_URL": ledger_url}.items():
        monkeypatch.setenv(name, value)
    return Services(Settings())


def test_a_host_with_other_keys_may_not_sign_the_shared_ledger(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'shared-ledger.sqlite3'}"
    with _host(tmp_path / "first", ledger_url, monkeypatch) as first:
        first.check_node_identity()
        first.record(CustodyAction.VIEWED, "case-1", {})
        signed = first.checkpoint()

    with _host(tmp_path / "stranger", ledger_url, monkeypatch) as stranger:
        with pytest.raises(ConfigurationError, match="copy the node's keys directory"):
            stranger.check_node_identity()
        stranger.record(CustodyAction.VIEWED, "case-1", {})  # an entry is not signed: it may still be recorded
        with pytest.raises(ConfigurationError, match="keys"):
            stranger.checkpoint()
        assert stranger.ledger.latest_checkpoint() == signed, "nothing was signed with the stranger's key"

    (tmp_path / "second").mkdir()
    shutil.copytree(tmp_path / "first" / "keys", tmp_path / "second" / "keys")
    with _host(tmp_path / "second", ledger_url, monkeypatch) as second:
        second.check_node_identity()
        later = second.checkpoint()
        assert later.tree_size == 2
    with _host(tmp_path / "first", ledger_url, monkeypatch) as first:
        size, _root = first.ledger.verify(first.verify_checkpoint)
        assert size == 2
