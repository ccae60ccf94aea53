"""Bad lease values on the in-memory registry, and the bounded decoder.

A value that does not decode is a bad lease: skipped, counted and logged,
never an exception out of decoding; a put that makes a known peer's value
bad removes the peer (with its previous attributes); a bad key still takes
its subnet, so acquisition never tries to create there.
"""

from __future__ import annotations

import random
import threading
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.errors import ConfigError
from flannelish.subnet.config import parse_network_config
from flannelish.subnet.jsonvalue import MAX_DEPTH, MAX_VALUE_BYTES, loads_bounded, nesting_depth
from flannelish.subnet.keeper import LeaseKeeper
from flannelish.subnet.lease import EventType, LeaseAttrs, LeaseDecodeError
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.watch import PeerTracker
from flannelish.testing.registry import InMemoryRegistry

pytestmark = pytest.mark.unit

NET = IPv4Network
GOOD = b'{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:00:00:00:00:09"}}'  # noqa: E501
DEEP = b"[" * 5000

BAD_VALUES = {
    "5000 [": DEEP,
    "5000 {": b'{"a":' * 5000,
    "deep but closed": b"[" * 40 + b"]" * 40,
    "oversized": b'{"PublicIP":"198.18.0.9","x":"' + b"a" * MAX_VALUE_BYTES + b'"}',
    "not UTF-8": b'{"PublicIP":"198.18.0.9","BackendType":"\xff\xfe"}',
    "UTF-16": '{"PublicIP":"198.18.0.9"}'.encode("utf-16"),
    "NaN": b'{"PublicIP":"198.18.0.9","BackendData":{"VNI":NaN}}',
    "1e999": b'{"PublicIP":"198.18.0.9","BackendData":{"VNI":1e999}}',
    "huge int": b'{"PublicIP":"198.18.0.9","BackendData":{"VNI":' + b"9" * 5000 + b"}}",
    "wrong types": b'{"PublicIP":["198.18.0.9"],"BackendType":"vxlan"}',
    "BackendData list": b'{"PublicIP":"198.18.0.9","BackendData":[1]}',
    "not JSON": b"{",
    "empty": b"",
    "array": b"[]",
}


def me(ip: str = "198.18.0.1", mac: str = "0a:00:00:00:00:01") -> LeaseAttrs:
    return LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


def make(config: str = '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}', seed: int = 1):
    reg = InMemoryRegistry()
    reg.put_config(config.encode())
    return reg, SubnetManager(reg, lease_ttl=100, rng=random.Random(seed))


@pytest.mark.parametrize("raw", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
def test_every_bad_value_is_a_lease_decode_error_and_nothing_else(raw):
    with pytest.raises(LeaseDecodeError):
        LeaseAttrs.from_json(raw)
    with pytest.raises(ConfigError):
        parse_network_config(raw)


def test_depth_is_bounded_before_json_loads_even_on_a_deep_thread_stack():
    # json.loads alone fails here with RecursionError when the stack is already deep.
    def recurse(n: int):
        if n:
            return recurse(n - 1)
        with pytest.raises(LeaseDecodeError, match="levels deep"):
            LeaseAttrs.from_json(b"[" * 600 + b"]" * 600)
        return True

    assert recurse(800)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"PublicIP":"198.18.0.9","BackendType":"' + "[{" * 100 + '\\"[["}'
    assert nesting_depth(text, MAX_DEPTH) == 1
    assert LeaseAttrs.from_json(text).backend_type.startswith("[{")
    assert nesting_depth("[" * (MAX_DEPTH + 1), MAX_DEPTH) == MAX_DEPTH + 1
    assert nesting_depth("[" * MAX_DEPTH + "]" * MAX_DEPTH, MAX_DEPTH) == MAX_DEPTH


def test_a_real_lease_is_well_under_the_cap_and_decodes_unchanged():
    assert len(GOOD) < MAX_VALUE_BYTES // 100
    assert LeaseAttrs.from_json(GOOD).to_json().encode() == GOOD


def test_worst_case_values_are_rejected_fast():
    hostile = [
        b"[" * MAX_VALUE_BYTES,
        b'["' * (MAX_VALUE_BYTES // 2),
        b'["\\"' * (MAX_VALUE_BYTES // 4),
        b"[" * 2_000_000,
    ]
    for raw in hostile:
        start = time.perf_counter()
        with pytest.raises(ValueError):
            loads_bounded(raw)
        assert time.perf_counter() - start < 0.2, raw[:20]


def test_lone_surrogates_become_replacement_characters_like_go():
    attrs = LeaseAttrs.from_json(b'{"PublicIP":"198.18.0.9","BackendType":"x\\ud800"}')
    assert attrs.backend_type == "x\ufffd"
    attrs.backend_type.encode("utf-8")  # loggable


def test_acquire_with_a_5000_bracket_value_present_skips_counts_and_avoids_its_subnet():
    reg, mgr = make()
    reg.put_value(NET("10.5.7.0/24"), DEEP)
    assert reg.bad_leases_total == 1
    lease = mgr.acquire(me(), previous_subnet=NET("10.5.7.0/24"))
    assert lease.subnet != NET("10.5.7.0/24")  # its key exists: never try to create there
    assert [b.subnet for b in reg.bad_leases] == [NET("10.5.7.0/24")]


def test_a_bad_key_in_a_tiny_pool_is_taken_not_a_livelock():
    reg, mgr = make('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}')
    reg.put_value(NET("10.5.1.0/24"), b"{")
    assert mgr.acquire(me()).subnet == NET("10.5.2.0/24")


def test_update_that_makes_a_peer_undecodable_removes_it_with_previous_attrs():
    reg, mgr = make()
    stop = threading.Event()
    peer = reg.put_value(NET("10.5.9.0/24"), GOOD)
    assert peer is not None
    events = mgr.watch_leases(stop)
    try:
        snapshot = next(events)
        assert [(e.type, e.lease.subnet) for e in snapshot] == [(EventType.ADDED, peer.subnet)]
        reg.put_value(peer.subnet, DEEP)
        batch = next(events)
        assert [(e.type, e.lease.subnet) for e in batch] == [(EventType.REMOVED, peer.subnet)]
        assert batch[0].previous == peer.attrs  # backends delete the old FDB/neigh/route
        reg.put_value(peer.subnet, GOOD)
        assert [e.type for e in next(events)] == [EventType.ADDED]
    finally:
        stop.set()


def test_bad_put_for_an_unknown_peer_emits_nothing():
    tracker = PeerTracker()
    reg = InMemoryRegistry()
    reg.put_value(NET("10.5.9.0/24"), DEEP)
    from flannelish.subnet.registry import Change

    assert tracker.apply([Change(NET("10.5.9.0/24"), None, 5, "bad")]) == []


def test_bad_lease_is_cleared_when_deleted_or_rewritten():
    reg, _ = make()
    reg.put_value(NET("10.5.9.0/24"), DEEP)
    reg.put_value(NET("10.5.10.0/24"), b"{")
    assert len(reg.bad_leases) == 2
    reg.expire(NET("10.5.9.0/24"))
    reg.put_value(NET("10.5.10.0/24"), GOOD)
    assert reg.bad_leases == []
    assert reg.bad_leases_total == 2


def test_keeper_whose_own_value_turns_bad_reacquires_elsewhere_and_never_overwrites_it():
    reg, mgr = make('{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.3.0"}')
    lease = mgr.acquire(me())
    changes = []
    done = threading.Event()
    keeper = LeaseKeeper(
        mgr,
        lease,
        renew_margin_s=3600,
        on_change=lambda new: (changes.append(new), done.set()),
        retry_interval_s=0.2,
    )
    keeper.start()
    try:
        time.sleep(0.3)
        reg.put_value(lease.subnet, DEEP)
        assert done.wait(5), "the keeper did not re-acquire"
        assert changes[-1].subnet != lease.subnet
        assert [b.subnet for b in reg.bad_leases] == [lease.subnet]  # left alone
        assert keeper.error is None
    finally:
        keeper.stop()
