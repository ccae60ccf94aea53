"""Shared fixtures: real etcd servers, namespaces, an isolated underlay.

Tests mirror the source tree (tests/<package>/...).  A test marked `unit`
(pure logic) or `etcd` (a real etcd on loopback, nothing else) runs without
root; every other test is marked `netns` (needs root and the kernel).
Every fixture removes what it made, also when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from flannelish.testing.etcd import EtcdCluster, EtcdMember, start_etcd, start_etcd_cluster
from flannelish.testing.netns import NetnsFactory, remove_stale_netns
from flannelish.testing.underlay import Underlay

NETNS_BASE = "flt"
TESTS_DIR = Path(__file__).parent

# Hypothesis budgets: "default" keeps `make test` bounded, "fuzz" is `make fuzz`
# (FLANNELISH_FUZZ=1).  Fuzz tests take their example count from the loaded profile
# (no max_examples of their own, or a fraction of settings.default.max_examples).
settings.register_profile("default", max_examples=50, deadline=None)
settings.register_profile("fuzz", max_examples=2000, deadline=None)
settings.load_profile("fuzz" if os.environ.get("FLANNELISH_FUZZ") == "1" else "default")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("unit") is None and item.get_closest_marker("etcd") is None:
            item.add_marker(pytest.mark.netns)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") and os.geteuid() != 0:
        pytest.fail("this test needs root (it creates network namespaces); run `make test` as root")


@pytest.fixture(scope="session", autouse=True)
def _remove_leftover_namespaces() -> None:
    """Namespaces of earlier crashed runs (their owner PID is gone) are removed first."""
    if os.geteuid() == 0:
        remove_stale_netns(NETNS_BASE)


@pytest.fixture
def netns_factory() -> Iterator[NetnsFactory]:
    factory = NetnsFactory(NETNS_BASE)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def underlay(netns_factory: NetnsFactory) -> Underlay:
    return Underlay(netns_factory).create()


@pytest.fixture
def etcd() -> Iterator[EtcdMember]:
    """A fresh single-member etcd on free loopback ports."""
    member = start_etcd()
    try:
        yield member
    finally:
        member.destroy()


@pytest.fixture
def underlay_etcd(underlay: Underlay) -> Iterator[EtcdMember]:
    """etcd inside the underlay namespace, on the bridge address hosts can reach."""
    member = start_etcd(name="ul-etcd", host=str(underlay.gateway), netns=underlay.netns)
    try:
        yield member
    finally:
        member.destroy()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    cluster = start_etcd_cluster(3)
    try:
        yield cluster
    finally:
        cluster.destroy()
