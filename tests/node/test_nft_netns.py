"""flannelish's nftables table in a real kernel: rules, repair, masquerade, anti-spoofing."""

from __future__ import annotations

import pytest

from flannelish.kernel.nft import NftCli
from flannelish.node.firewall import NftRules
from flannelish.testing.proc import run

from .conftest import NETWORK, PORT
from .ophelpers import ConntrackProbe, UdpReceiver, ping, send_spoofed_vxlan, send_udp


def nft_rules(overlay_node, **kwargs) -> NftRules:
    return NftRules(
        NETWORK,
        overlay_node.subnet,
        PORT,
        runner=NftCli(netns=overlay_node.host.netns),
        **kwargs,
    )


def listing(netns: str) -> str:
    return run(["nft", "list", "ruleset"], netns=netns).stdout


def spoof(overlay) -> None:
    n1, n2 = overlay.node1, overlay.node2
    send_spoofed_vxlan(overlay.rogue.netns, n2.host.ip, n2.mac, n2.pod_ip,
                       inner_src=str(n1.subnet.network_address + 66))  # fmt: skip


def test_rules_exist_are_idempotent_restored_and_removed_cleanly(overlay):
    ns = overlay.node1.host.netns
    # A foreign table that must survive everything we do.
    foreign_rules = (
        "add table inet other; add chain inet other c { type filter hook input priority 0; };"
        " add rule inet other c tcp dport 22 accept"
    )
    run(["nft", foreign_rules], netns=ns)
    foreign = run(["nft", "list", "table", "inet", "other"], netns=ns).stdout
    nft = nft_rules(overlay.node1, masq=True)
    nft.set_peers([overlay.node2.host.ip])
    nft.apply()
    text = listing(ns)
    assert "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return" in text
    assert "masquerade fully-random" in text
    assert "udp dport 8472 ip saddr != @vxlan_peers counter" in text
    assert "elements = { 198.18.0.2 }" in text
    assert nft.present()

    nft.apply()
    assert listing(ns) == text  # idempotent

    run(["nft", "delete", "table", "ip", "flannelish"], netns=ns)
    assert not nft.present()
    assert nft.ensure() is True
    assert listing(ns) == text

    run(["nft", "delete rule ip flannelish postrouting handle "
         + _first_handle(ns, "postrouting")], netns=ns)  # fmt: skip
    assert not nft.present()
    nft.ensure()
    assert nft.present()

    nft.remove()
    assert run(["nft", "list", "table", "inet", "other"], netns=ns).stdout == foreign
    assert "flannelish" not in listing(ns)


def _first_handle(ns: str, chain: str) -> str:
    out = run(["nft", "-a", "list", "chain", "ip", "flannelish", chain], netns=ns).stdout
    return next(line.rsplit("# handle ", 1)[1] for line in out.splitlines() if "comment" in line)


def test_masquerade_hides_pods_from_the_outside_but_not_from_pods(overlay):
    n1 = overlay.node1
    nft_rules(n1, masq=True).apply()
    outside = UdpReceiver(overlay.out.netns)
    pod2 = UdpReceiver(overlay.node2.pod)
    try:
        send_udp(n1.pod, str(overlay.out.ip), "to-world")
        send_udp(n1.pod, overlay.node2.pod_ip, "to-pod")
        assert outside.lines() == [f"{n1.host.ip} to-world"]
        assert pod2.lines() == [f"{n1.pod_ip} to-pod"]
    finally:
        outside.stop()
        pod2.stop()


def test_tunnel_packets_between_peers_skip_conntrack_and_nat_and_filter_stay_right(overlay):
    n1, n2 = overlay.node1, overlay.node2
    for node, peer in ((n1, n2), (n2, n1)):
        nft = nft_rules(node, masq=True)
        nft.set_peers([peer.host.ip])
        nft.apply()
    sender, receiver = (ConntrackProbe(n.host.netns, "ip", PORT) for n in (n1, n2))
    outside = UdpReceiver(overlay.out.netns)
    pod2 = UdpReceiver(n2.pod, idle=3.0)
    try:
        spoof(overlay)
        send_udp(n1.pod, str(overlay.out.ip), "to-world")
        send_udp(n1.pod, n2.pod_ip, "to-pod")
        assert outside.lines() == [f"{n1.host.ip} to-world"]  # still masqueraded
        seen = pod2.lines()
    finally:
        outside.stop()
        pod2.stop()
    assert seen == [f"{n1.pod_ip} to-pod"]  # the pod's own source; nothing spoofed
    out, into = sender.counts(), receiver.counts()
    assert out["untracked"] >= 1 and out["tracked"] == 0  # encapsulated on n1: untracked
    assert out["inner"] >= 2  # the pod flows themselves are still tracked (NAT needs them)
    # On n2: the peer's packets untracked, the rogue's 3 tracked (not a peer) and dropped.
    assert into["untracked"] >= 1 and into["tracked"] == 3
    assert ping(n1.pod, n2.pod_ip)


def test_kube_proxy_marked_traffic_is_not_masqueraded(overlay):
    n1 = overlay.node1
    nft_rules(n1, masq=True).apply()
    # Stand-in for kube-proxy: mark forwarded pod traffic 0x4000 in another table.
    run(["nft", "add table ip kp; add chain ip kp fw { type filter hook forward priority -10; };"
         " add rule ip kp fw meta mark set mark or 0x4000"], netns=n1.host.netns)  # fmt: skip
    outside = UdpReceiver(overlay.out.netns)
    try:
        send_udp(n1.pod, str(overlay.out.ip), "marked")
        assert outside.lines() == [f"{n1.pod_ip} marked"]
    finally:
        outside.stop()


@pytest.mark.parametrize("allow_any", [False, True])
def test_spoofed_vxlan_from_a_non_peer_is_dropped_unless_allow_any(overlay, allow_any):
    n1, n2 = overlay.node1, overlay.node2
    nft = nft_rules(n2, allow_any_vxlan=allow_any)
    nft.set_peers([n1.host.ip])
    nft.apply()
    receiver = UdpReceiver(n2.pod, idle=3.0)
    try:
        spoof(overlay)
        send_udp(n1.pod, n2.pod_ip, "from-peer")  # genuine peer traffic over VXLAN
        seen = receiver.lines()
    finally:
        receiver.stop()
    assert f"{n1.pod_ip} from-peer" in seen
    spoofed = [line for line in seen if line.endswith("spoofed")]
    if allow_any:
        assert spoofed and spoofed[0].startswith("10.244.1.66")
        assert nft.rejected_packets() == 0
    else:
        assert spoofed == []
        assert nft.rejected_packets() == 3
    assert ping(n1.pod, n2.pod_ip)


def test_peer_set_follows_peer_changes(overlay):
    n1, n2 = overlay.node1, overlay.node2
    nft = nft_rules(n2)
    nft.set_peers([])
    nft.apply()
    assert not ping(n1.pod, n2.pod_ip, count=1)  # node1 not yet a peer: its VXLAN is dropped
    nft.set_peers([n1.host.ip])
    assert ping(n1.pod, n2.pod_ip)
    assert nft.present()


def test_reconciler_restores_a_deleted_table_with_its_peer_set_in_one_pass(overlay):
    from flannelish.daemon.reconciler import Reconciler
    from flannelish.node.firewall_owner import NftOwner
    from flannelish.subnet.lease import Lease, LeaseAttrs

    n1, n2 = overlay.node1, overlay.node2
    owner = NftOwner(nft_rules(n2, masq=True))
    rec = Reconciler([owner])
    peers = [Lease(n1.subnet, LeaseAttrs(n1.host.ip, "vxlan"))]
    rec.reconcile([])  # start-up pass, before the lease snapshot
    owner.arm()
    rec.reconcile(peers)
    rec.reconcile(peers)
    ns = n2.host.netns
    text = listing(ns)
    assert "udp dport 8472 ip saddr != @vxlan_peers" in text and "198.18.0.1" in text
    run(["nft", "delete", "table", "ip", "flannelish"], netns=ns)
    result = rec.reconcile(peers)
    assert result.errors == 0 and owner.repairs == 1
    assert listing(ns) == text
    assert ping(n1.pod, n2.pod_ip)
    owner.rules.remove()  # clean shutdown
    assert "flannelish" not in listing(ns)
