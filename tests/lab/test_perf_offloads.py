"""`lab perf`'s iperf3 parsing and figures, and verify's offload toggling (no root needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from flannelish.errors import FlannelishError
from flannelish.lab import offloads, perf
from flannelish.lab.state import LabSpec, LabState, NodeState, PodState

pytestmark = pytest.mark.unit

ETHTOOL_K = """Features for eth0:
rx-checksumming: on
tx-checksumming: on
tcp-segmentation-offload: on
\ttx-tcp-segmentation: on
\ttx-tcp6-segmentation: on
generic-segmentation-offload: on
generic-receive-offload: on
tx-gre-segmentation: on
tx-udp_tnl-segmentation: on
tx-udp_tnl-csum-segmentation: off
tx-udp-segmentation: on [fixed]
"""


def iperf_json(bps: float, retrans: int = 7) -> str:
    sent = {"bits_per_second": bps * 1.01, "retransmits": retrans}
    return json.dumps(
        {"start": {}, "end": {"sum_sent": sent, "sum_received": {"bits_per_second": bps}}}
    )


def test_parse_iperf_takes_the_receivers_rate_and_retransmits() -> None:
    assert perf.parse_iperf(iperf_json(12.5e9, 3)) == (12.5, 3)


@pytest.mark.parametrize(
    "text",
    [
        '{"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}',
        '{"start": {}, "end": {}}',
        "iperf3: error - unable to connect",
        "",
        "[]",
    ],
)
def test_parse_iperf_rejects_errors_and_missing_rates(text: str) -> None:
    with pytest.raises(FlannelishError):
        perf.parse_iperf(text)


def _report() -> perf.PerfReport:
    def res(kind: str, gbps: list[float]) -> perf.PerfResult:
        p = perf.Path(kind, "a", "b", "ns-a", "ns-b", "10.244.1.2")
        return perf.PerfResult(p, gbps, [0] * len(gbps))

    results = [res("same node", [20, 22, 21]), res("cross node", [9, 10, 11]),
               res("underlay", [18, 20, 25])]  # fmt: skip
    return perf.PerfReport("vxlan", 2, 3, results, (1.0, 2.0))


def test_report_figures_are_medians_with_units_and_ratios_to_the_underlay() -> None:
    flat = perf.as_json(_report())
    assert flat["cross_node_gbps_median"] == 10
    assert (flat["cross_node_gbps_min"], flat["cross_node_gbps_max"]) == (9, 11)
    assert flat["cross_node_vs_underlay_ratio"] == 0.5
    assert flat["same_node_vs_underlay_ratio"] == 1.05
    assert flat["backend"] == "vxlan" and flat["loadavg_1m_before"] == 1.0


def _lab(ip_family: str = "ipv4") -> LabState:
    six = ip_family != "ipv4"

    def pod(name: str, node: str, ip: str, ip6: str) -> PodState:
        return PodState(name, node, f"ns-{name}", name, ip=ip, ip6=ip6 if six else "")

    return LabState(
        spec=LabSpec(ip_family=ip_family),
        dir="/nonexistent",
        nodes=[NodeState("node1", "ns1", "198.18.0.1", "", "", "", ip6="fd18::1" if six else ""),
               NodeState("node2", "ns2", "198.18.0.2", "", "", "", ip6="fd18::2" if six else "")],
        pods=[pod("node1-pod1", "node1", "10.244.1.2", "fd44:0:0:1::2"),
              pod("node1-pod2", "node1", "10.244.1.3", "fd44:0:0:1::3"),
              pod("node2-pod1", "node2", "10.244.2.2", "fd44:0:0:2::2")],
    )  # fmt: skip


def test_paths_need_two_pods_for_same_node_and_two_nodes_for_the_rest() -> None:
    state = _lab()
    got = perf.paths(state)
    assert [(p.kind, p.client, p.server_ip) for p in got] == [
        ("same node", "node1-pod1", "10.244.1.3"),
        ("cross node", "node1-pod1", "10.244.2.2"),
        ("underlay", "node1", "198.18.0.2"),
    ]
    state.nodes = state.nodes[:1]
    assert [p.kind for p in perf.paths(state)] == ["same node"]


def test_paths_of_a_dual_stack_lab_use_the_asked_family() -> None:
    state = _lab("dual")
    assert [p.server_ip for p in perf.paths(state, 6)] == ["fd44:0:0:1::3", "fd44:0:0:2::2",
                                                          "fd18::2"]  # fmt: skip
    assert perf.paths(state, 4)[2].server_ip == "198.18.0.2"
    assert perf.default_family(state) == 4 and perf.default_family(_lab("ipv6")) == 6
    with pytest.raises(FlannelishError, match="carries no IPv6"):
        perf.perf(_lab(), family=6)


def test_perf_measures_every_family_of_the_lab_unless_one_is_asked(monkeypatch) -> None:
    measured = []
    monkeypatch.setattr(perf, "perf", lambda state, s, r, family: measured.append(family))
    perf.perf_families(_lab("dual"), 1, 1)
    perf.perf_families(_lab("ipv6"), 1, 1)
    perf.perf_families(_lab("dual"), 1, 1, family=6)
    perf.perf_families(_lab(), 1, 1)
    assert measured == [4, 6, 6, 6, 4]


def test_parse_features_and_what_is_on_and_changeable() -> None:
    feats = offloads.parse_features(ETHTOOL_K)
    assert feats["tcp-segmentation-offload"] == (True, False)
    assert feats["tx-udp-segmentation"] == (True, True)
    # on and not fixed; csum-segmentation is off, udp-segmentation fixed
    assert offloads.changeable_on(feats) == ["tso", "gso", "tx-udp_tnl-segmentation"]


class FakeEthtool:
    def __init__(self, fail_set_on: str = "") -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_set_on = fail_set_on

    def __call__(self, argv: list[str], netns: str | None = None) -> SimpleNamespace:
        assert netns is not None
        self.calls.append((netns, argv[1:]))
        if argv[1] == "-K" and netns == self.fail_set_on and argv[-1] == "off":
            raise RuntimeError("ethtool -K failed")
        return SimpleNamespace(stdout=ETHTOOL_K)


def test_segmentation_is_off_during_the_capture_and_restored_after() -> None:
    fake = FakeEthtool()
    with offloads.segmentation_off(["n1", "n2"], runner=fake) as changed:
        assert changed == {n: ["tso", "gso", "tx-udp_tnl-segmentation"] for n in ("n1", "n2")}
        off = [c for c in fake.calls if c[1][0] == "-K"]
        assert off == [(n, ["-K", "eth0", "tso", "off", "gso", "off",
                            "tx-udp_tnl-segmentation", "off"]) for n in ("n1", "n2")]  # fmt: skip
        fake.calls.clear()
    assert fake.calls == [(n, ["-K", "eth0", "tso", "on", "gso", "on",
                               "tx-udp_tnl-segmentation", "on"]) for n in ("n2", "n1")]  # fmt: skip


def test_offloads_are_restored_when_the_capture_fails_or_a_node_cannot_be_set() -> None:
    fake = FakeEthtool()
    with pytest.raises(ValueError), offloads.segmentation_off(["n1"], runner=fake):
        raise ValueError("capture failed")
    assert fake.calls[-1] == ("n1", ["-K", "eth0", "tso", "on", "gso", "on",
                                     "tx-udp_tnl-segmentation", "on"])  # fmt: skip
    fake = FakeEthtool(fail_set_on="n2")
    with pytest.raises(RuntimeError), offloads.segmentation_off(["n1", "n2"], runner=fake):
        pass
    restored = [c[0] for c in fake.calls if c[1][0] == "-K" and c[1][-1] == "on"]
    assert restored == ["n2", "n1"]  # n2 is attempted too: its -K may have half-applied
