"""`flannelish uninstall` removes network policy's table and marker too."""

from __future__ import annotations

from pathlib import Path

import pytest
from flannelish.cni.handler import POLICY_MARKER

from flannelish.node.teardown import teardown
from flannelish.testing.fake_kernel import FakeNetlink

pytestmark = pytest.mark.unit


class TwoTables:
    def __init__(self) -> None:
        self.tables = {("ip", "flannelish"), ("inet", "flannelish-policy"), ("inet", "other")}
        self.scripts: list[str] = []

    def run(self, script: str) -> None:
        self.scripts.append(script)
        _, _, family, name = script.split()
        self.tables.discard((family, name))

    def listing(self, *what: str) -> list | None:
        return [{"table": {}}] if (what[1], what[2]) in self.tables else None


def test_uninstall_removes_policy_table_and_marker(tmp_path: Path) -> None:
    marker = tmp_path / POLICY_MARKER
    marker.write_text("{}")
    nft = TwoTables()
    plan = teardown(FakeNetlink(), nft, dry_run=True, state_dir=tmp_path)
    assert plan.tables == ["ip flannelish", "inet flannelish-policy"] and plan.files == [
        str(marker)
    ]
    assert marker.exists() and nft.scripts == []
    teardown(FakeNetlink(), nft, state_dir=tmp_path)
    assert nft.tables == {("inet", "other")} and not marker.exists()
