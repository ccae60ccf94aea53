"""Skipped peers through a real daemon (issue 12 items 1 and 9).

A lease whose route would land on a foreign route (same destination, not our
protocol) is a conflict: the foreign route stays as it was, the peer is
skipped with its reason in `flannelish status`, /status and
``flannelish_peers_skipped{reason=...}``, and its PublicIP stays out of the
anti-spoof set, like the PublicIP of a lease admission refused.  Only a
programmed peer's PublicIP may send us VXLAN.
"""

from __future__ import annotations

import json
import sys

from .conftest import PREFIX
from .drillkit import nft_peer_set as nft_peers
from .helpers import VENV_BIN, kernel_state, wait_for
from .test_daemon_overlay import fake_peer_value

PORT = "10263"
FOREIGN = "10.244.240.0/24"
CONFLICT_IP, BAD_MAC_IP, GOOD_IP = "198.18.0.92", "198.18.0.93", "198.18.0.94"


def test_a_conflicting_or_refused_peer_is_reported_and_kept_out_of_the_anti_spoof_set(
    start_daemons, underlay_etcd
):
    # The table's own resync is 60 s: the anti-spoof set must follow the backend's skips
    # at once, not at that loop's next pass.
    (a,) = start_daemons(
        1, "--healthz-ip", "127.0.0.1", "--healthz-port", PORT, "--iptables-resync", "60"
    )
    a.host.run("ip", "route", "add", FOREIGN, "via", "198.18.0.254", "proto", "static")
    foreign = a.host.run("ip", "route", "show", FOREIGN).stdout
    put = underlay_etcd.etcdctl
    put(
        "put",
        f"{PREFIX}/subnets/10.244.240.0-24",
        fake_peer_value("0e:00:00:00:f0:01", CONFLICT_IP),
    )
    put(
        "put", f"{PREFIX}/subnets/10.244.241.0-24", fake_peer_value("ff:ff:ff:ff:ff:ff", BAD_MAC_IP)
    )
    put("put", f"{PREFIX}/subnets/10.244.242.0-24", fake_peer_value("0e:00:00:00:f0:03", GOOD_IP))
    flannelish = str(VENV_BIN / "flannelish")

    def doc() -> dict:
        out = a.host.run(flannelish, "status", "--json", "--healthz-port", PORT, check=False)
        return json.loads(out.stdout or "{}")

    def skipped() -> dict:
        return doc().get("peers", {}).get("skipped", {})

    wait_for(lambda: len(skipped()) == 2 and GOOD_IP in (nft_peers(a.host) or ()), 10,
             what="two peers skipped, the good one in the anti-spoof set")  # fmt: skip
    reasons = skipped()
    assert set(reasons) == {FOREIGN, "10.244.241.0/24"}, reasons
    assert "does not own" in reasons[FOREIGN] or "conflict" in reasons[FOREIGN], reasons
    assert "MAC" in reasons["10.244.241.0/24"], reasons
    assert doc()["peers"]["programmed"] == 1

    # The foreign route is untouched; the conflicting peer left nothing of ours.
    assert a.host.run("ip", "route", "show", FOREIGN).stdout == foreign
    state = kernel_state(a.host)
    assert [r[0] for r in state["route"]] == ["10.244.242.0/24"]
    assert not any(f[1] in (CONFLICT_IP, BAD_MAC_IP) for f in state["fdb"]), state
    assert not any(n[0] in ("10.244.240.0", "10.244.241.0") for n in state["neigh"]), state

    # Only the programmed peer may send VXLAN (item 9).
    wait_for(lambda: nft_peers(a.host) == [GOOD_IP], 1.5, what="only the programmed peer's IP")

    text = a.host.run(flannelish, "status", "--healthz-port", PORT).stdout
    assert f"skipped {FOREIGN}" in text and "skipped 10.244.241.0/24" in text
    metrics = a.host.run(sys.executable, "-c", "import urllib.request as u; print(u.urlopen("
                         f"'http://127.0.0.1:{PORT}/metrics').read().decode())").stdout  # fmt: skip
    assert 'flannelish_peers_skipped{reason="conflict"} 1.0' in metrics, metrics
    assert 'flannelish_peers_skipped{reason="vtep-mac"} 1.0' in metrics, metrics

    # The foreign route goes: the peer is programmed at the next pass, and joins the set.
    a.host.run("ip", "route", "del", FOREIGN)
    wait_for(lambda: CONFLICT_IP in (nft_peers(a.host) or ()) and FOREIGN not in skipped(),
             15, what="the former conflict programmed")  # fmt: skip
