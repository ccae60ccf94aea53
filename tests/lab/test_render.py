"""The lab's tables show packet descriptions verbatim (brackets are not rich markup)."""

from __future__ import annotations

import pytest
from rich.console import Console

from flannelish.lab.analysis import FAIL, PASS, Analysis, Verdict
from flannelish.lab.render import verify_table

pytestmark = pytest.mark.unit


def test_verify_table_keeps_bracketed_inner_packet_descriptions():
    detail = "1 packets: 198.18.0.1->198.18.0.2 udp/8472 vni 1 [icmp 10.244.1.0->10.244.2.2]"
    analysis = Analysis(
        verdicts=[
            Verdict("inner src/dst are the pod IPs, unchanged (no NAT)", FAIL, detail),
            Verdict("VNI 1 on every VXLAN packet", PASS, "3 packets"),
        ]
    )
    console = Console(width=250, record=True)
    console.print(verify_table(analysis))
    text = console.export_text()
    assert "[icmp 10.244.1.0->10.244.2.2]" in text
    assert "FAIL" in text and "pass" in text
