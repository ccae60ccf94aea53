"""random_mac: the one generator behind the VTEP and the CNI bridge addresses."""

from __future__ import annotations

import re

import pytest

from flannelish.kernel.mac import random_mac

pytestmark = pytest.mark.unit


def test_random_mac_is_locally_administered_unicast():
    for _ in range(50):
        mac = random_mac()
        assert re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac)
        first = int(mac.split(":")[0], 16)
        assert first & 0x01 == 0 and first & 0x02 == 2


def test_random_macs_differ():
    assert len({random_mac() for _ in range(20)}) == 20
