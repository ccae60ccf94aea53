"""The hostile-etcd suite's pure parts: blame, /status and /metrics parsing, bad values."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from flannelish.testing.hostile import (
    PEER_MAC,
    FdbE,
    NeighE,
    RouteE,
    bad_kinds,
    footprint,
    good_lease,
    skipped_metric,
    skipped_reasons,
)

pytestmark = pytest.mark.unit

UL = IPv4Network("198.18.0.0/24")


def route(dst: str, gw: str | None = None, dev: str = "flannel.1", proto: str | None = "70"):
    return RouteE("main", dst, gw, dev, proto, None, "unicast", None, gw is not None)


def kind(backend: str, name: str):
    return next(k for k in bad_kinds(backend, UL) if k.name == name)


def test_a_lost_entry_is_blamed_by_key_only():
    n2_neigh = NeighE("10.244.2.0", "flannel.1", PEER_MAC)
    base = frozenset({n2_neigh, route("198.18.0.0/24", None, "eth0", "kernel")})
    slice_neigh = NeighE("10.244.2.0", "flannel.1", "0e:00:00:00:00:4b")
    now = frozenset({slice_neigh, route("198.18.0.0/24", "198.18.0.0")})
    # The /25 slice replaced n2's neighbour: blamed on the slice ...
    assert footprint(base, now, kind("vxlan", "slice-of-peer").leases) == [
        f"+{slice_neigh.text()}",
        f"-{n2_neigh.text()}",
    ]
    # ... not on the lease that merely reuses n2's MAC elsewhere.
    assert footprint(base, now, kind("vxlan", "dup-vtep-mac").leases) == []
    # The underlay-prefix lease replaced the connected route.
    marks = footprint(base, now, kind("vxlan", "underlay-prefix").leases)
    assert any(m.startswith("-route 198.18.0.0/24 dev eth0") for m in marks)
    assert any(m.startswith("+route 198.18.0.0/24 via 198.18.0.0") for m in marks)


def test_fdb_entries_are_blamed_by_mac_or_public_ip():
    base: frozenset = frozenset()
    now = frozenset({FdbE(PEER_MAC, "flannel.1", "198.18.0.78")})
    assert footprint(base, now, kind("vxlan", "dup-vtep-mac").leases)
    now = frozenset({FdbE("0e:00:00:00:00:64", "flannel.1", "10.244.2.2")})
    assert footprint(base, now, kind("vxlan", "publicip-in-pod-network").leases)


@pytest.mark.parametrize(
    "skipped",
    [
        {"8.8.8.8/32": "outside Network 10.244.0.0/16"},
        {"8.8.8.8-32": {"reason": "outside Network"}},
        {"/coreos.com/network/subnets/8.8.8.8-32": "outside Network"},
        [{"subnet": "8.8.8.8/32", "reason": "outside Network"}],
        [{"key": "/coreos.com/network/subnets/8.8.8.8-32", "reason": "outside Network"}],
    ],
)
def test_status_skipped_section_in_any_reasonable_shape(skipped):
    reasons = skipped_reasons({"peers": {"skipped": skipped}})
    assert reasons["8.8.8.8/32"].startswith("outside Network")


def test_status_without_reasons_names_nothing():
    assert skipped_reasons({"peers": {"skipped": {}, "skipped_count": 6}}) == {}


def test_skipped_metric_sums_per_reason():
    text = (
        "# HELP flannelish_peers_skipped Skipped peers by reason\n"
        "# TYPE flannelish_peers_skipped gauge\n"
        'flannelish_peers_skipped{reason="outside-network"} 2.0\n'
        'flannelish_peers_skipped{reason="undecodable"} 3.0\n'
        'flannelish_peers{backend="vxlan",state="skipped"} 5.0\n'
    )
    assert skipped_metric(text) == {"outside-network": 2.0, "undecodable": 3.0}
    assert skipped_metric('flannelish_peers{backend="vxlan",state="skipped"} 5.0\n') == {}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_bad_values_are_what_they_claim(backend):
    kinds = {k.name: k for k in bad_kinds(backend, UL)}
    assert ("dup-vtep-mac" in kinds) == (backend == "vxlan")
    assert kinds["nested-json"].leases[0].value == "[" * 5000
    with pytest.raises(ValueError):
        json.loads(kinds["non-json"].leases[0].value)
    sizes = [len(x.value) for x in kinds["oversized"].leases]
    assert len(sizes) == 3 and sum(sizes) > 4 * 1024 * 1024 and max(sizes) < 1_500_000
    assert kinds["underlay-prefix"].leases[0].key == "198.18.0.0-24"
    for k in kinds.values():
        if k.name in ("non-json", "nested-json", "bad-key"):
            continue
        for lease in k.leases:
            doc = json.loads(lease.value)
            assert doc["PublicIP"] == lease.public_ip
    good = json.loads(good_lease(backend, 3).value)
    assert good["BackendType"] == backend and good["PublicIP"] == "198.18.0.3"
