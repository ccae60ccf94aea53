"""NodeOps: the daemon-facing wiring of NodeState, the health server and the nft owner."""

from __future__ import annotations

import json
import urllib.request
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.daemon.reconciler import Reconciler
from flannelish.node.ops import NodeOps, NodeOpsOptions
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.testing.nft import FakeNft

from .test_firewall import labels

pytestmark = pytest.mark.unit

NETWORK = IPv4Network("10.244.0.0/16")


def lease(n: int, ip: str) -> Lease:
    return Lease(IPv4Network(f"10.244.{n}.0/24"), LeaseAttrs(IPv4Address(ip), "vxlan"), None)


def test_lifecycle_as_the_daemon_drives_it():
    fake = FakeNft()
    ops = NodeOps(
        NodeOpsOptions(ip_masq=True, healthz_ip="127.0.0.1", healthz_port=0),
        node="n1",
        backend="vxlan",
        device="flannel.1",
        runner=fake,
    )
    owners = ops.start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=8472)
    assert ops.server is None  # port 0: no health server, like flanneld
    rec = Reconciler(owners)
    peers = [lease(2, "198.18.0.2")]
    ops.on_pass(rec.reconcile([]), 0)
    ops.subnet_env_written("/run/flannel/subnet.env")
    assert ops.state.ready()[0]
    ops.peers_synced()
    for _ in range(2):
        ops.on_pass(rec.reconcile(peers), len(peers))
    assert labels(fake.table["chains"]["input"]) == ["anti-spoof: vxlan from non-peers"]
    assert fake.table["set"] == {IPv4Address("198.18.0.2")}
    status = ops.state.status()
    assert status["peers"] == {"in_etcd": 1, "programmed": 1, "skipped": {}, "skipped_count": 0}
    fake.table = None  # deleted by hand: the next pass restores it
    ops.on_pass(rec.reconcile(peers), 1)
    assert ops.state.ready()[0] and fake.table is not None

    before = list(fake.table["chains"]["postrouting"])
    ops.lease_changed(lease(7, "198.18.0.1"))  # lease moved: new masquerade rules
    ops.on_pass(rec.reconcile(peers), 1)
    after = fake.table["chains"]["postrouting"]
    assert labels(after) == labels(before) and after != before
    assert ops.state.status()["lease"]["subnet"] == "10.244.7.0/24"

    ops.stop()  # the table protects the data path while the daemon is down: it stays
    assert fake.table is not None and fake.table["set"] == {IPv4Address("198.18.0.2")}


def test_nft_trouble_makes_the_node_not_ready():
    fake = FakeNft()
    ops = NodeOps(NodeOpsOptions(), runner=fake)
    owners = ops.start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=None)  # host-gw
    ops.subnet_env_written("/x")
    rec = Reconciler(owners)
    ops.on_pass(rec.reconcile([]), 0)
    assert ops.state.ready()[0]
    fake.table = None
    ops.on_pass(type("R", (), {"seconds": 0.0, "changes": 0, "errors": 0, "skipped": 0})(), 0)
    ok, checks = ops.state.ready()
    assert not ok and [c.name for c in checks if not c.ok] == ["nftables"]


def test_health_server_runs_when_a_port_is_given():
    from flannelish.testing.etcd import free_port

    port = free_port()
    ops = NodeOps(NodeOpsOptions(healthz_ip="127.0.0.1", healthz_port=port), runner=FakeNft())
    ops.start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=8472)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
            assert json.loads(resp.read())["lease"]["subnet"] == "10.244.1.0/24"
    finally:
        ops.stop()


def test_missing_nft_is_fatal_only_with_ip_masq(monkeypatch):
    import pytest

    from flannelish.errors import NotAvailableError
    from flannelish.node import ops as nodeops

    monkeypatch.setattr(nodeops.shutil, "which", lambda _name: None)
    with pytest.raises(NotAvailableError, match="--ip-masq needs nftables"):
        NodeOps(NodeOpsOptions(ip_masq=True)).start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=1)
    ops = NodeOps(NodeOpsOptions())
    assert ops.start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=8472) == []
    ops.stop()


def test_a_failing_nft_check_is_rechecked_by_per_event_passes_a_passing_one_is_not():
    """Start-up fills the set and arms the drop rule through events: readiness must see the
    table complete at the next event, not only at the next full pass (up to a resync away)."""
    from dataclasses import replace

    fake = FakeNft()
    ops = NodeOps(NodeOpsOptions(), runner=fake)
    owners = ops.start(NETWORK, lease(1, "198.18.0.1"), vxlan_port=8472)
    ops.subnet_env_written("/x")
    rec = Reconciler(owners)
    full = rec.reconcile([])
    ops.on_pass(full, 0)
    assert ops.state.ready()[0]
    listings = []
    real_listing = fake.listing
    fake.listing = lambda *what, **kw: listings.append(what) or real_listing(*what, **kw)  # type: ignore[method-assign]
    per_event = replace(full, full=False)

    ops.on_pass(per_event, 0)
    assert listings == []  # passing: a per-event apply costs no O(peers) listing

    saved, fake.table = fake.table, None  # the check fails at a full pass...
    ops.on_pass(replace(full, changes=0), 0)
    assert not ops.state.ready()[0]
    fake.table = saved  # ...and the table is complete again before the next full pass
    listings.clear()
    ops.on_pass(per_event, 0)
    assert listings and ops.state.ready()[0]
