"""The rtnetlink wire format: attribute packing and parsing (no kernel)."""

from __future__ import annotations

import pytest

from flannelish.kernel import rtnl

pytestmark = pytest.mark.unit


def test_attrs_are_padded_to_four_bytes_and_parse_back():
    blob = rtnl.attr(rtnl.NDA_LLADDR, rtnl.mac_bytes("0e:00:00:00:00:01")) + rtnl.attr(
        rtnl.NDA_DST, bytes([10, 244, 2, 0])
    )
    assert len(blob) == 12 + 8  # 4+6 padded to 12, then 4+4
    attrs = rtnl.parse_attrs(blob)
    assert rtnl.mac_str(attrs[rtnl.NDA_LLADDR]) == "0e:00:00:00:00:01"
    assert attrs[rtnl.NDA_DST] == bytes([10, 244, 2, 0])
