"""Fixtures shared by the kernel tests: a fresh namespace and RawNetlink bound to it."""

import pytest

from flannelish.kernel.rawnetlink import RawNetlink


@pytest.fixture
def ns(netns_factory):
    return netns_factory.create("k")


@pytest.fixture
def nl(ns):
    kernel = RawNetlink(ns)
    yield kernel
    kernel.close()
