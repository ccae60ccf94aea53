"""The node daemon's lifecycle with the in-memory registry and the fake kernel (no root)."""

from __future__ import annotations

import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.daemon.node import DaemonOptions, NodeDaemon
from flannelish.errors import ConfigError, KernelError
from flannelish.kernel.netlink import Addr
from flannelish.subnet.lease import LeaseAttrs
from flannelish.subnet.manager import SubnetManager
from flannelish.testing.fake_kernel import FakeNetlink
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

CONFIG = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


def fake_kernel() -> FakeNetlink:
    nl = FakeNetlink()
    eth0 = nl.add_link("eth0", mtu=1500)
    nl.add_addr(Addr(eth0.index, IPv4Address("198.18.0.1"), 24))
    nl.default_oif = eth0.index
    return nl


def peer_attrs(n: int) -> LeaseAttrs:
    mac = f"0e:00:00:00:00:{n:02x}"
    return LeaseAttrs(IPv4Address(f"198.18.0.{n}"), "vxlan", {"VNI": 1, "VtepMAC": mac})


class Running:
    def __init__(self, tmp_path, registry, nl, **kw):
        opts = DaemonOptions(
            etcd=None, subnet_file=tmp_path / "subnet.env", resync_seconds=0.2, **kw
        )
        self.node = NodeDaemon(opts, nl, SubnetManager(registry), kernel_notifications=False)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.node.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        assert self.node.started.wait(30) or self.error, "daemon did not start"
        return self.node

    def __exit__(self, *exc):
        self.node.stop()
        self.thread.join(10)


def wait_for(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def registry():
    reg = InMemoryRegistry()
    reg.put_config(CONFIG)
    return reg


def test_start_writes_subnet_env_and_programs_existing_and_new_peers(tmp_path, registry):
    mgr = SubnetManager(registry)
    mgr.acquire(peer_attrs(2), IPv4Network("10.244.2.0/24"))
    nl = fake_kernel()
    with Running(tmp_path, registry, nl) as node:
        env = (tmp_path / "subnet.env").read_text()
        assert f"FLANNEL_SUBNET={node.status.lease.subnet.network_address + 1}/24" in env
        assert "FLANNEL_MTU=1450" in env
        vx = nl.link("flannel.1")
        assert vx is not None and vx.up and vx.mtu == 1450
        wait_for(lambda: len(nl.routes()) == 1)
        # Not the daemon's own (random) subnet: expiring that would expire its lease.
        third = next(
            s
            for s in (IPv4Network("10.244.3.0/24"), IPv4Network("10.244.4.0/24"))
            if s != node.status.lease.subnet
        )
        mgr.acquire(peer_attrs(3), third)
        wait_for(lambda: len(nl.routes()) == 2)
        registry.expire(third)
        wait_for(lambda: len(nl.routes()) == 1)
    assert (tmp_path / "flannel.1.vtep-mac").exists()


def test_restart_keeps_subnet_and_mac_and_deletes_nothing(tmp_path, registry):
    SubnetManager(registry).acquire(peer_attrs(2), IPv4Network("10.244.2.0/24"))
    nl = fake_kernel()
    with Running(tmp_path, registry, nl) as node:
        subnet, mac = node.status.lease.subnet, node.backend.mac
        wait_for(lambda: len(nl.routes()) == 1)
    nl.calls.clear()
    with Running(tmp_path, registry, nl) as node:
        assert node.status.lease.subnet == subnet and node.backend.mac == mac
        time.sleep(0.5)  # a few resync passes
    assert not [op for op, _ in nl.calls if op.startswith(("del", "create"))], nl.calls


def test_device_deleted_while_running_is_rebuilt_by_the_periodic_resync(tmp_path, registry):
    SubnetManager(registry).acquire(peer_attrs(2), IPv4Network("10.244.2.0/24"))
    nl = fake_kernel()
    with Running(tmp_path, registry, nl) as node:
        wait_for(lambda: len(nl.routes()) == 1)
        nl.delete_link(nl.link("flannel.1").index)
        wait_for(lambda: nl.link("flannel.1") is not None and len(nl.routes()) == 1)
        assert nl.link("flannel.1").mac == node.backend.mac


def test_kernel_failure_at_start_is_reported_with_its_exit_code(tmp_path, registry):
    nl = fake_kernel()
    nl.fail_on = {"create_vxlan"}
    opts = DaemonOptions(etcd=None, subnet_file=tmp_path / "subnet.env")
    node = NodeDaemon(opts, nl, SubnetManager(registry), kernel_notifications=False)
    with pytest.raises(KernelError) as err:
        node.run()
    assert err.value.exit_code == 7 and "flannel.1" in str(err.value)
    assert not (tmp_path / "subnet.env").exists()
    leases, _ = registry.list_leases()
    assert leases == []  # the device comes before the lease: nothing was taken


def test_missing_underlay_interface_is_a_config_error(tmp_path, registry):
    opts = DaemonOptions(etcd=None, subnet_file=tmp_path / "subnet.env", ifaces=["eth9"])
    node = NodeDaemon(opts, fake_kernel(), SubnetManager(registry), kernel_notifications=False)
    with pytest.raises(ConfigError, match="--iface eth9"):
        node.run()


def test_changed_vtep_mac_is_advertised_in_the_lease(tmp_path, registry):
    nl = fake_kernel()
    with Running(tmp_path, registry, nl) as node:
        subnet = node.status.lease.subnet
        # As if the device came back with another MAC (e.g. its state file was lost).
        node.backend.devices[0].mac = "0e:00:00:00:99:99"
        nl.delete_link(nl.link("flannel.1").index)

        def advertised() -> str | None:
            leases, _ = registry.list_leases()
            mine = [x for x in leases if x.subnet == subnet]
            return mine[0].attrs.vtep_mac if mine else None

        wait_for(lambda: advertised() == "0e:00:00:00:99:99")
        assert nl.link("flannel.1").mac == "0e:00:00:00:99:99"
        assert node.status.lease.attrs.vtep_mac == "0e:00:00:00:99:99"


def test_systemd_hears_ready_only_after_subnet_env_is_written(tmp_path, registry, monkeypatch):
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        with Running(tmp_path, registry, fake_kernel()) as node:
            message = systemd.recv(4096).decode()
            assert message.splitlines()[0] == "READY=1"
            assert f"STATUS=lease {node.status.lease.key}" in message
            assert (tmp_path / "subnet.env").exists()


class OrderedOwner:
    """An owner beside the backend that records whether the backend had passed first."""

    def __init__(self, node: NodeDaemon) -> None:
        self.node = node
        self.backend_passes_seen: list[int] = []

    def ensure_base(self) -> bool:
        assert self.node.loop is not None
        self.backend_passes_seen.append(self.node.loop.passes)
        return False

    def resources(self):
        return ()

    def plan(self, peer):
        return ()


def test_other_owners_first_pass_waits_for_the_backends(tmp_path, registry, monkeypatch):
    # The routes carry the traffic: at start-up the nftables owner's pass must
    # not compete with the backend's (see NodeDaemon._backend_passed).
    for n in (2, 3):
        SubnetManager(registry).acquire(peer_attrs(n), IPv4Network(f"10.244.{n}.0/24"))
    owners: list[OrderedOwner] = []

    def start_ops(self, *_args):
        owners.append(OrderedOwner(self))
        self._owners = tuple(owners)

    monkeypatch.setattr(NodeDaemon, "_start_node_ops", start_ops)
    with Running(tmp_path, registry, fake_kernel()):
        wait_for(lambda: owners and owners[0].backend_passes_seen)
    assert owners[0].backend_passes_seen[0] >= 1


def test_no_watch_event_outlives_its_batch(tmp_path, registry):
    # The start-up batch has one event per peer; the watch generator and the
    # loop would keep it for as long as the cluster stays quiet (memory per peer).
    import gc

    from flannelish.subnet.lease import Event

    for n in range(2, 42):
        SubnetManager(registry).acquire(peer_attrs(n), IPv4Network(f"10.244.{n}.0/24"))
    with Running(tmp_path, registry, fake_kernel()) as node:
        wait_for(lambda: node.loop is not None and node.loop.passes > 0)
        assert len(node.peers) == 40
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, Event)]
        assert len(alive) < 5, f"{len(alive)} lease events still held"


def test_gc_freeze_and_heap_release_wait_for_every_loops_first_pass(
    tmp_path, registry, monkeypatch
):
    import gc

    import flannelish.daemon.node as node_module

    SubnetManager(registry).acquire(peer_attrs(2), IPv4Network("10.244.2.0/24"))
    owners: list[OrderedOwner] = []
    released: list[list[int]] = []

    def start_ops(self, *_args):
        owners.append(OrderedOwner(self))
        self._owners = tuple(owners)

    monkeypatch.setattr(NodeDaemon, "_start_node_ops", start_ops)
    monkeypatch.setattr(
        node_module,
        "release_free_heap",
        lambda: released.append([lp.passes for lp in owners[0].node.loops]),
    )
    try:
        with Running(tmp_path, registry, fake_kernel(), freeze_gc_after_sync=True):
            wait_for(lambda: released)
            time.sleep(0.5)  # later passes: once only
        assert len(released) == 1
        assert all(passes >= 1 for passes in released[0])  # the backend's and the owner's
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
