"""The host-local compatible allocator and store, on a temp dir (no kernel)."""

from __future__ import annotations

import ipaddress
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from flannelish.cni import ipam
from flannelish.cni.netconf import load
from flannelish.cni.protocol import CniError

pytestmark = pytest.mark.unit


def _conf(tmp_path, **section):
    section.setdefault("subnet", "10.5.0.0/24")
    section["dataDir"] = str(tmp_path)
    doc = {
        "cniVersion": "1.0.0",
        "name": "net",
        "subnetFile": str(tmp_path / "none"),
        "ipam": section,
    }
    return load(doc, "ADD")


def _ip(allocs) -> str:
    return str(allocs[0].ip)


def test_first_allocation_skips_network_and_gateway_and_writes_host_local_files(tmp_path):
    conf = _conf(tmp_path)
    assert _ip(ipam.allocate(conf, "c1", "eth0")) == "10.5.0.2"
    store = tmp_path / "net"
    assert (store / "10.5.0.2").read_bytes() == b"c1\r\neth0"
    assert (store / "last_reserved_ip.0").read_text() == "10.5.0.2"
    assert (store / "lock").exists()


def test_round_robin_continues_after_last_reserved_and_wraps(tmp_path):
    conf = _conf(tmp_path, rangeStart="10.5.0.10", rangeEnd="10.5.0.12")
    got = [_ip(ipam.allocate(conf, f"c{i}", "eth0")) for i in range(3)]
    assert got == ["10.5.0.10", "10.5.0.11", "10.5.0.12"]
    assert ipam.release(conf.store_dir, "c0", "eth0") == [ipaddress.ip_address("10.5.0.10")]
    assert ipam.release(conf.store_dir, "c1", "eth0")
    assert _ip(ipam.allocate(conf, "c3", "eth0")) == "10.5.0.10"  # wrapped past .12
    assert _ip(ipam.allocate(conf, "c4", "eth0")) == "10.5.0.11"


def test_exhaustion_names_the_range_set(tmp_path):
    conf = _conf(tmp_path, rangeStart="10.5.0.240", rangeEnd="10.5.0.241")
    ipam.allocate(conf, "a", "eth0")
    ipam.allocate(conf, "b", "eth0")
    assert ipam.free_count(conf) == [0]
    with pytest.raises(CniError) as err:
        ipam.allocate(conf, "c", "eth0")
    assert err.value.msg.endswith("no IP addresses available in range set: 10.5.0.240-10.5.0.241")


def test_duplicate_allocation_for_same_container_and_ifname_is_refused(tmp_path):
    conf = _conf(tmp_path)
    ipam.allocate(conf, "a", "eth0")
    with pytest.raises(CniError, match="duplicate allocation is not allowed"):
        ipam.allocate(conf, "a", "eth0")
    assert _ip(ipam.allocate(conf, "a", "eth1"))  # another interface is fine


def test_second_range_set_failure_releases_the_first(tmp_path):
    conf = _conf(tmp_path, ranges=[[{"subnet": "10.6.0.0/30"}]])
    ipam.allocate(conf, "a", "eth0")  # takes the only address of 10.6.0.0/30
    with pytest.raises(CniError, match="range 1"):
        ipam.allocate(conf, "b", "eth0")
    assert sorted(os.listdir(tmp_path / "net")) == [
        "10.5.0.2",
        "10.6.0.2",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
        "lock",
    ]


def test_release_understands_legacy_files_without_ifname(tmp_path):
    conf = _conf(tmp_path)
    os.makedirs(conf.store_dir)
    (tmp_path / "net" / "10.5.0.9").write_text("old-ctr")
    assert [str(i) for i in ipam.release(conf.store_dir, "old-ctr", "eth0")] == ["10.5.0.9"]
    assert ipam.release(str(tmp_path / "missing"), "x", "eth0") == []


def test_garbage_collection_keeps_valid_attachments(tmp_path):
    conf = _conf(tmp_path)
    for cid in ("a", "b", "c"):
        ipam.allocate(conf, cid, "eth0")
    gone = ipam.collect_garbage(conf.store_dir, [("b", "eth0")])
    assert sorted(e.container_id for e in gone) == ["a", "c"]
    assert [e.container_id for e in ipam.Store(conf.store_dir).entries()] == ["b"]


def test_concurrent_allocations_from_threads_never_collide(tmp_path):
    conf = _conf(tmp_path, subnet="10.5.0.0/25")
    with ThreadPoolExecutor(max_workers=32) as pool:
        ips = list(pool.map(lambda i: _ip(ipam.allocate(conf, f"c{i}", "eth0")), range(120)))
    assert len(set(ips)) == 120
    assert "10.5.0.1" not in ips and "10.5.0.0" not in ips and "10.5.0.127" not in ips
    for i in range(5):  # a /25 has 125 allocatable addresses (126 hosts minus the gateway)
        ipam.allocate(conf, f"rest{i}", "eth0")
    with pytest.raises(CniError, match="no IP addresses available"):
        ipam.allocate(conf, "one-too-many", "eth0")


# --- reservations are durable ----------------------------------------


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync as ("file"|"dir", path, content at that moment), in call order."""
    calls: list[tuple[str, str, bytes | None]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(path):
            calls.append(("dir", path, None))
        else:
            with open(path, "rb") as fh:
                calls.append(("file", path, fh.read()))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls


def test_a_reservation_is_fsynced_with_its_content_and_then_its_directory(tmp_path, fsyncs):
    conf = _conf(tmp_path)
    ipam.allocate(conf, "c1", "eth0")
    store = str(tmp_path / "net")
    assert ("dir", str(tmp_path), None) in fsyncs  # the new store directory's name
    file_at = fsyncs.index(("file", f"{store}/10.5.0.2", b"c1\r\neth0"))
    dir_after = [i for i, call in enumerate(fsyncs) if call == ("dir", store, None)]
    assert dir_after and dir_after[-1] > file_at  # the name is made durable after the data
    assert sorted(os.listdir(store)) == ["10.5.0.2", "last_reserved_ip.0", "lock"]


def test_release_and_garbage_collection_fsync_the_directory_once(tmp_path, fsyncs):
    conf = _conf(tmp_path)
    for cid in ("c1", "c2", "c3"):
        ipam.allocate(conf, cid, "eth0")
    store = str(tmp_path / "net")
    fsyncs.clear()
    assert [str(ip) for ip in ipam.release(store, "c1", "eth0")] == ["10.5.0.2"]
    assert fsyncs == [("dir", store, None)]
    fsyncs.clear()
    assert len(ipam.collect_garbage(store, [])) == 2
    assert fsyncs == [("dir", store, None)]
    fsyncs.clear()
    ipam.release(store, "gone", "eth0")  # nothing released: nothing to sync
    assert fsyncs == []


def test_a_failed_write_leaves_no_orphan_reservation(tmp_path, monkeypatch):
    import errno

    from flannelish.errors import CniCode

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    conf = _conf(tmp_path)
    ipam.allocate(conf, "c1", "eth0")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(CniError) as err:
        ipam.allocate(conf, "c2", "eth0")
    assert err.value.cni_code == CniCode.IO_FAILURE and "No space left" in err.value.msg
    assert sorted(os.listdir(tmp_path / "net")) == ["10.5.0.2", "last_reserved_ip.0", "lock"]


def test_a_data_dir_that_cannot_hold_a_store_is_code_5(tmp_path):
    from flannelish.errors import CniCode

    (tmp_path / "file").write_text("")
    conf = _conf(tmp_path / "file")  # the store would be <file>/net
    with pytest.raises(CniError) as err:
        ipam.allocate(conf, "c1", "eth0")
    assert err.value.cni_code == CniCode.IO_FAILURE and "cannot use IPAM store" in err.value.msg


def test_unreadable_entries_are_skipped_but_stay_taken(tmp_path):
    conf = _conf(tmp_path)
    store = tmp_path / "net"
    store.mkdir()
    (store / "10.5.0.2").mkdir()  # not a file: cannot be read, cannot be re-created
    (store / "10.5.0.3").write_bytes(b"c\xff\r\neth0")  # not UTF-8
    assert _ip(ipam.allocate(conf, "c1", "eth0")) == "10.5.0.4"
    owners = sorted(e.container_id for e in ipam.Store(str(store)).entries())
    assert owners == ["c1", "c\udcff"]
