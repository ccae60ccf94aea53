"""Fixtures for the lease manager's tests against a real etcd."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from lease_helpers import CONFIG

from flannelish.subnet.etcdstore import EtcdOptions
from flannelish.subnet.manager import SubnetManager
from flannelish.subnet.registry import EtcdRegistry


@pytest.fixture
def registries() -> Iterator[Callable[..., EtcdRegistry]]:
    """Factory of EtcdRegistry clients (one per simulated node), all closed afterwards."""
    made: list[EtcdRegistry] = []

    def make(endpoints: str | list[str], **flags: str) -> EtcdRegistry:
        registry = EtcdRegistry(EtcdOptions.from_flags(endpoints=endpoints, **flags))
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def manager(etcd, registries) -> SubnetManager:
    registry = registries(etcd.client_url)
    registry.put_config(CONFIG)
    return SubnetManager(registry)
