"""VXLAN DirectRouting: per-peer choice, switching diffs, live config changes (fake kernel)."""

from __future__ import annotations

import json
import logging
import threading
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import flannelish.backends.hostgw as hostgw
import pytest
from flannelish.backends.base import Backend, BackendContext, ExternalInterface
from flannelish.backends.hostgw import HostGwBackend
from flannelish.backends.onlink import OnLink, onlink_prefixes
from flannelish.backends.vxlan import VxlanBackend

from flannelish.daemon.configwatch import ConfigWatch
from flannelish.daemon.diff import diff
from flannelish.daemon.node import DaemonOptions, NodeDaemon
from flannelish.daemon.reconciler import Reconciler
from flannelish.errors import ConfigError, EtcdError
from flannelish.kernel.netlink import ROUTE_PROTO, Addr, Fdb, Neigh, Route
from flannelish.kernel.resources import FdbResource, NeighResource, RouteResource
from flannelish.subnet.config import parse_network_config
from flannelish.subnet.lease import Lease, LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.fake_kernel import FakeNetlink
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

OWN = IPv4Network("10.244.1.0/24")


def config(direct: bool | None = True, **backend) -> bytes:
    section = {"Type": "vxlan", **backend}
    if direct is not None:
        section["DirectRouting"] = direct
    return json.dumps({"Network": "10.244.0.0/16", "Backend": section}).encode()


def peer(n: int, ip: str | None = None, btype: str = "vxlan") -> Lease:
    mac = f"0e:00:00:00:00:{n:02x}"
    return Lease(
        IPv4Network(f"10.244.{n}.0/24"),
        LeaseAttrs(IPv4Address(ip or f"198.18.0.{n}"), btype, {"VNI": 1, "VtepMAC": mac}),
    )


def kernel(tmp_path: Path, direct: bool = True, **backend):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), 1500
    )
    net = parse_network_config(config(direct, **backend))
    be = VxlanBackend(BackendContext(nl, ext, net, tmp_path))
    be.setup()
    be.bind_lease(Lease(OWN, be.lease_attrs()))
    nl.calls.clear()
    return SimpleNamespace(nl=nl, eth0=eth0, backend=be, rec=Reconciler([be]))


def state(k) -> tuple[list, list, list]:
    idx = k.backend.index
    return (
        sorted(str(n.ip) for n in k.nl.neighs(idx)),
        sorted(f.mac for f in k.nl.fdbs(idx)),
        sorted((str(r.dst), str(r.gateway), r.oif, r.onlink) for r in k.nl.routes()),
    )


def vxlan_route(k, n: int) -> tuple[str, str, int, bool]:
    return (f"10.244.{n}.0/24", f"10.244.{n}.0", k.backend.index, True)


def direct_route(k, n: int, ip: str | None = None) -> tuple[str, str, int, bool]:
    return (f"10.244.{n}.0/24", ip or f"198.18.0.{n}", k.eth0.index, False)


# -- the shared on-link helper ---------------------------------------------------------


def test_onlink_helper_is_shared_with_host_gw():
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0")
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.add_addr(Addr(eth0.index, IPv4Address("10.9.9.9"), 32))
    assert set(onlink_prefixes(nl, eth0.index)) == {
        IPv4Network("198.18.0.0/24"),
        IPv4Network("10.9.9.9/32"),
    }
    onlink = OnLink(nl, eth0.index)
    assert IPv4Address("198.18.0.7") not in onlink  # not refreshed yet
    onlink.refresh()
    assert IPv4Address("198.18.0.7") in onlink and IPv4Address("198.19.0.7") not in onlink
    assert hostgw.OnLink is OnLink  # one implementation, not a copy


# -- per-peer decision -------------------------------------------------------------------


def test_on_link_peer_gets_only_a_plain_route_off_link_peer_keeps_vxlan(tmp_path):
    k = kernel(tmp_path)
    near, far = peer(2), peer(3, "198.19.0.3")
    assert k.backend.plan(near) == (
        Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.2"), k.eth0.index),
    )
    far_plan = k.backend.plan(far)
    assert [type(o) for o in far_plan] == [Neigh, Fdb, Route]
    result = k.rec.reconcile([near, far])
    assert result.errors == 0 and result.skipped == 0
    assert state(k) == (
        ["10.244.3.0"],
        ["0e:00:00:00:00:03"],
        [direct_route(k, 2), vxlan_route(k, 3)],
    )
    assert all(r.proto == ROUTE_PROTO for r in k.nl.routes())
    assert k.rec.reconcile([near, far]).changes == 0  # converged


def test_without_direct_routing_every_peer_uses_vxlan(tmp_path):
    k = kernel(tmp_path, direct=False)
    k.rec.reconcile([peer(2), peer(3, "198.19.0.3")])
    assert state(k)[2] == [vxlan_route(k, 2), vxlan_route(k, 3)]
    assert len(state(k)[1]) == 2


def test_peers_that_would_hijack_our_traffic_are_still_skipped(tmp_path):
    k = kernel(tmp_path)
    own_ip = peer(2, "198.18.0.1")
    overlapping = Lease(IPv4Network("10.244.1.0/25"), peer(3).attrs)
    foreign = peer(4, btype="host-gw")
    result = k.rec.reconcile([own_ip, overlapping, foreign])
    assert result.skipped == 3 and k.nl.routes() == []


# -- switching between the kinds ------------------------------------------------------------


def test_switching_off_adds_neigh_and_fdb_then_replaces_the_route_in_place(tmp_path):
    k = kernel(tmp_path)
    peers = [peer(2), peer(3, "198.19.0.3")]
    k.rec.reconcile(peers)
    k.nl.calls.clear()
    assert k.backend.reconfigure(parse_network_config(config(False))) == []
    k.rec.reconcile(peers)
    assert [op for op, _ in k.nl.calls] == ["replace_neigh", "replace_fdb", "replace_route"]
    assert state(k) == (
        ["10.244.2.0", "10.244.3.0"],
        ["0e:00:00:00:00:02", "0e:00:00:00:00:03"],
        [vxlan_route(k, 2), vxlan_route(k, 3)],
    )


def test_switching_on_removes_neigh_and_fdb_and_replaces_the_route(tmp_path):
    k = kernel(tmp_path, direct=False)
    peers = [peer(2), peer(3, "198.19.0.3")]
    k.rec.reconcile(peers)
    k.nl.calls.clear()
    k.backend.reconfigure(parse_network_config(config(True)))
    k.rec.reconcile(peers)
    # The route is re-pointed first: no packet meets a tunnel route without its neighbour.
    assert [op for op, _ in k.nl.calls] == ["replace_route", "del_fdb", "del_neigh"]
    assert state(k) == (
        ["10.244.3.0"],
        ["0e:00:00:00:00:03"],
        [direct_route(k, 2), vxlan_route(k, 3)],
    )
    # and back: nothing stale of either kind, whatever the number of flips
    for direct in (False, True, False):
        k.backend.reconfigure(parse_network_config(config(direct)))
        k.rec.reconcile(peers)
    assert state(k) == (
        ["10.244.2.0", "10.244.3.0"],
        ["0e:00:00:00:00:02", "0e:00:00:00:00:03"],
        [vxlan_route(k, 2), vxlan_route(k, 3)],
    )


def test_diff_applies_pure_in_place_replacements_before_the_deletions():
    nl = FakeNetlink()
    resources = [NeighResource(nl, lambda: 5), FdbResource(nl, lambda: 5), RouteResource(nl)]
    subnet, gw, mac = IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0"), "0e:00:00:00:00:02"
    tunnel = [
        Neigh(5, gw, mac),
        Fdb(5, mac, IPv4Address("198.18.0.2")),
        Route(subnet, gw, 5, onlink=True),
    ]
    direct = [Route(subnet, IPv4Address("198.18.0.2"), 2)]
    actual = {"neigh": [tunnel[0]], "fdb": [tunnel[1]], "route": [tunnel[2]]}
    plan = diff(resources, [direct], actual)
    assert plan.early == [direct] and plan.apply == [] and plan.remove == tunnel[1::-1]
    # the other way round nothing is removed: neigh, fdb, then the route, in one group
    plan = diff(resources, [tunnel], {"neigh": [], "fdb": [], "route": direct})
    assert plan.early == [] and plan.remove == [] and plan.apply == [tunnel]
    # a group that also adds a new key waits for the deletions (a changed MAC: old FDB first)
    new_mac = "0e:aa:00:00:00:02"
    changed = [Neigh(5, gw, new_mac), Fdb(5, new_mac, IPv4Address("198.18.0.2")), tunnel[2]]
    plan = diff(resources, [changed], actual)
    assert plan.early == [] and plan.remove == [tunnel[1]] and plan.apply == [changed[:2]]


def test_peer_moving_on_or_off_link_changes_kind_without_stale_entries(tmp_path):
    k = kernel(tmp_path)
    k.rec.reconcile([peer(2)])
    assert state(k) == ([], [], [direct_route(k, 2)])
    k.rec.reconcile([peer(2, "198.19.0.2")])  # its PublicIP moved off our segment
    assert state(k) == (["10.244.2.0"], ["0e:00:00:00:00:02"], [vxlan_route(k, 2)])
    k.rec.reconcile([peer(2, "198.18.0.22")])  # and back onto it
    assert state(k) == ([], [], [direct_route(k, 2, "198.18.0.22")])
    k.rec.reconcile([])
    assert state(k) == ([], [], [])


def test_readdressed_underlay_is_seen_at_the_next_base_check(tmp_path):
    k = kernel(tmp_path)
    k.rec.reconcile([peer(2)])
    k.nl.del_addr(Addr(k.eth0.index, IPv4Address("198.18.0.1"), 24))
    k.nl.add_addr(Addr(k.eth0.index, IPv4Address("198.18.0.1"), 32))
    k.rec.reconcile([peer(2)], check_base=False)  # lease-event pass: old view
    assert state(k)[2] == [direct_route(k, 2)]
    k.rec.reconcile([peer(2)], check_base=True)
    assert state(k) == (["10.244.2.0"], ["0e:00:00:00:00:02"], [vxlan_route(k, 2)])


def test_direct_peers_need_no_device(tmp_path):
    k = kernel(tmp_path)
    k.backend.devices[0].index = None  # e.g. between a device loss and its rebuild
    assert k.backend.plan(peer(2)) == (
        Route(IPv4Network("10.244.2.0/24"), IPv4Address("198.18.0.2"), k.eth0.index),
    )
    assert k.backend.plan(peer(3, "198.19.0.3")).reason == "device flannel.1 not present"


def test_path_changes_are_logged_once(tmp_path, caplog):
    k = kernel(tmp_path)
    caplog.set_level(logging.INFO, logger="flannelish.vxlan")
    caplog.clear()  # device set-up lines
    k.rec.reconcile([peer(2)])
    k.rec.reconcile([peer(2, "198.19.0.2")])
    k.rec.reconcile([peer(2, "198.19.0.2")])
    lines = [r.getMessage() for r in caplog.records if r.name == "flannelish.vxlan"]
    assert lines == ["peer 10.244.2.0/24: VXLAN: PublicIP 198.19.0.2 is not on-link on eth0"]


# -- reconfigure: what applies live, what needs a restart -------------------------------------


def test_reconfigure_names_options_that_need_a_restart_and_applies_only_direct_routing(tmp_path):
    k = kernel(tmp_path, direct=False)
    new = parse_network_config(config(True, VNI=2, Port=4789, MTU=1500))
    # MTU 1500 == the underlay MTU: effectively unchanged
    assert k.backend.reconfigure(new) == ["VNI", "Port"]
    assert k.backend.options.direct_routing and k.backend.options.vni == 1
    assert k.backend.name == "flannel.1" and k.backend.port == 8472
    assert k.backend.reconfigure(parse_network_config(config(True, Port=8472))) == []


def test_invalid_backend_section_applies_nothing(tmp_path):
    k = kernel(tmp_path, direct=False)
    bad = SimpleNamespace(backend={"Type": "vxlan", "DirectRouting": "yes"})
    with pytest.raises(ConfigError, match="DirectRouting"):
        k.backend.reconfigure(bad)
    assert not k.backend.options.direct_routing


def test_default_reconfigure_of_a_backend_needs_a_restart_for_any_change(tmp_path):
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0")
    ext = ExternalInterface(
        "eth0", eth0.index, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), 1500
    )
    net = SimpleNamespace(network=None, backend={"Type": "host-gw"})
    be: Backend = HostGwBackend(BackendContext(nl, ext, net, tmp_path))
    assert be.reconfigure(SimpleNamespace(backend={"type": "host-gw"})) == []
    assert be.reconfigure(SimpleNamespace(backend={"Type": "host-gw", "Foo": 1})) == ["Foo"]


# -- the config watch -------------------------------------------------------------------------


class Source:
    def __init__(self, raw: bytes) -> None:
        self.raw: bytes | None = raw
        self.error: Exception | None = None

    def __call__(self):
        if self.error is not None:
            raise self.error
        if self.raw is None:
            raise ConfigError("network config not found in etcd at key /x/config")
        return parse_network_config(self.raw)


def watch_for(k, raw: bytes):
    source = Source(raw)
    triggered = []
    watch = ConfigWatch(source, source(), k.backend, lambda: triggered.append(1), 1.0)
    return source, watch, triggered


def test_config_watch_applies_direct_routing_and_triggers_a_pass(tmp_path):
    k = kernel(tmp_path, direct=False)
    source, watch, triggered = watch_for(k, config(False))
    assert not watch.poll() and triggered == []  # unchanged
    source.raw = config(True)
    assert watch.poll() and triggered == [1] and watch.restart_needed == []
    assert k.backend.options.direct_routing
    assert not watch.poll()  # handled once
    source.raw = config(None)  # DirectRouting absent = false
    assert watch.poll() and not k.backend.options.direct_routing


def test_config_watch_logs_settings_that_need_a_restart_and_keeps_running(tmp_path, caplog):
    k = kernel(tmp_path, direct=False)
    source, watch, _ = watch_for(k, config(False))
    caplog.set_level(logging.INFO)
    source.raw = (
        b'{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan","VNI":3,"DirectRouting":true}}'
    )
    assert watch.poll()
    assert watch.restart_needed == ["Network", "SubnetMin", "SubnetMax", "Backend.VNI"]
    assert k.backend.options.direct_routing  # the live part is applied anyway
    assert (
        "needs a restart of the daemon: Network, SubnetMin, SubnetMax, Backend.VNI" in caplog.text
    )
    caplog.clear()
    source.raw = b'{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}'
    assert watch.poll()
    assert watch.restart_needed == ["Backend.Type"]
    assert k.backend.options.direct_routing  # another backend's section is not applied
    assert "needs a restart of the daemon: Backend.Type" in caplog.text


def test_config_watch_reports_an_unreadable_config_once_and_keeps_the_running_one(tmp_path, caplog):
    k = kernel(tmp_path, direct=False)
    source, watch, triggered = watch_for(k, config(False))
    caplog.set_level(logging.INFO, logger="flannelish.daemon")
    source.raw = b'{"Network":"10.244.0.0/16",'  # an operator's half-written edit
    for _ in range(3):
        assert not watch.poll()
    source.raw = None
    assert not watch.poll()
    source.error = EtcdError("etcd unreachable")
    assert not watch.poll() and not watch.poll()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # one per distinct problem
    assert "not valid JSON" in warnings[0] and "keeping the running one" in warnings[0]
    assert "not found" in warnings[1] and "etcd unreachable" in warnings[2]
    source.error, source.raw = None, config(True)
    assert watch.poll() and k.backend.options.direct_routing and triggered == [1]


def test_invalid_backend_section_in_a_changed_config_is_reported(tmp_path, caplog):
    k = kernel(tmp_path, direct=False)
    source, watch, _ = watch_for(k, config(False))
    # Valid for the config parser (the backend parses its own section), invalid for vxlan.
    source.raw = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":1}}'
    assert watch.poll()
    assert "new Backend section ignored" in caplog.text
    assert not k.backend.options.direct_routing


# -- the daemon: a config change in the registry converges without a restart -------------------


def test_daemon_follows_direct_routing_toggled_in_the_registry(tmp_path):
    registry = InMemoryRegistry()
    registry.put_config(config(True))
    mgr = SubnetManager(registry)
    near_attrs = LeaseAttrs(
        IPv4Address("198.18.0.2"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:02"}
    )
    far_attrs = LeaseAttrs(
        IPv4Address("198.19.0.3"), "vxlan", {"VNI": 1, "VtepMAC": "0e:00:00:00:00:03"}
    )
    mgr.acquire(near_attrs, IPv4Network("10.244.2.0/24"))
    mgr.acquire(far_attrs, IPv4Network("10.244.3.0/24"))
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.default_oif = eth0.index
    opts = DaemonOptions(etcd=None, subnet_file=tmp_path / "subnet.env", resync_seconds=0.2)
    node = NodeDaemon(opts, nl, SubnetManager(registry), kernel_notifications=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            node.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def routes() -> dict[str, tuple[str, str]]:
        link = nl.link("flannel.1")
        names = {eth0.index: "eth0", link.index if link else -1: "flannel.1"}
        return {str(r.dst): (str(r.gateway), names.get(r.oif, "?")) for r in nl.routes()}

    def wait(cond, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert not errors, errors
            assert time.monotonic() < deadline, f"timed out; routes={routes()}"
            time.sleep(0.02)

    direct = {
        "10.244.2.0/24": ("198.18.0.2", "eth0"),
        "10.244.3.0/24": ("10.244.3.0", "flannel.1"),
    }
    tunnel = {
        "10.244.2.0/24": ("10.244.2.0", "flannel.1"),
        "10.244.3.0/24": ("10.244.3.0", "flannel.1"),
    }
    try:
        assert node.started.wait(30) or errors
        wait(lambda: routes() == direct)
        index = nl.link("flannel.1").index
        assert [str(n.ip) for n in nl.neighs(index)] == ["10.244.3.0"]
        registry.put_config(config(False))
        wait(lambda: routes() == tunnel and len(nl.neighs(index)) == 2 and len(nl.fdbs(index)) == 2)
        registry.put_config(config(True))
        wait(lambda: routes() == direct and len(nl.neighs(index)) == 1 and len(nl.fdbs(index)) == 1)
        assert thread.is_alive() and node.config_watch.changes == 2
        # A change that cannot be applied live is reported, and the daemon keeps running.
        registry.put_config(config(True, VNI=5))
        wait(lambda: node.config_watch.restart_needed == ["Backend.VNI"])
        time.sleep(0.3)
        assert thread.is_alive() and nl.link("flannel.5") is None and routes() == direct
    finally:
        node.stop()
        thread.join(10)
    assert not errors
