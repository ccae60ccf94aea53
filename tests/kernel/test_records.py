"""Kernel records: frozen values that compare and hash by their fields (like dataclasses)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from flannelish.kernel.netlink import ROUTE_PROTO, Addr, Link, Route, record_fields, replace

pytestmark = pytest.mark.unit


def test_equal_fields_mean_equal_records_and_equal_hashes():
    a = Route(IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0"), 5, onlink=True)
    b = Route(
        dst=IPv4Network("10.244.2.0/24"), gateway=IPv4Address("10.244.2.0"), oif=5, onlink=True
    )
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.proto == ROUTE_PROTO and a.scope is None and a.priority is None
    assert a != replace(a, oif=6)


def test_records_of_different_types_never_compare_equal():
    assert Addr(1, IPv4Address("10.0.0.1"), 24) != (1, IPv4Address("10.0.0.1"), 24)
    link = Link(1, "eth0", "", "02:00:00:00:00:01", 1500, True)
    assert link != Addr(1, IPv4Address("10.0.0.1"), 24)


def test_records_are_frozen():
    addr = Addr(1, IPv4Address("10.0.0.1"), 24)
    with pytest.raises(AttributeError):
        addr.prefixlen = 16  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del addr.index  # type: ignore[misc]


def test_defaults_repr_field_names_and_bad_arguments():
    link = Link(3, "cni0", "bridge", "02:00:00:00:00:03", 1450, up=False)
    assert (link.vxlan, link.master, link.promisc, link.peer_index) == (None, 0, False, 0)
    assert repr(link).startswith("Link(index=3, name='cni0', kind='bridge'")
    assert record_fields(link)[:3] == ("index", "name", "kind")
    assert replace(link, up=True).up and not link.up
    with pytest.raises(TypeError, match="missing"):
        Addr(1, IPv4Address("10.0.0.1"))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected"):
        Addr(1, IPv4Address("10.0.0.1"), 24, scope=0)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 3"):
        Addr(1, IPv4Address("10.0.0.1"), 24, 0)  # type: ignore[call-arg]
