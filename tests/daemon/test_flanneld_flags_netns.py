"""A daemon started with flanneld's flags in Go's syntax against an etcd without config:
--net-config-path seeds it, --iface-can-reach picks eth0, --ip-blackhole-route keeps a
blackhole route to our subnet (restored at once when deleted)."""

from __future__ import annotations

import json

import pytest

from .helpers import DaemonProc, wait_for

PREFIX = "/coreos.com/network"


def blackholes(host) -> list[dict]:
    return json.loads(host.run("ip", "-j", "route", "show", "type", "blackhole").stdout or "[]")


@pytest.mark.slow
def test_go_syntax_flags_net_config_path_can_reach_and_blackhole(underlay, underlay_etcd,
                                                                  tmp_path):  # fmt: skip
    host = underlay.add_host("h1")
    conf = tmp_path / "net-conf.json"
    conf.write_text('{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    flags = [f"-net-config-path={conf}", "-iface-can-reach", str(underlay.gateway),
             "-ip-blackhole-route=true", "--iptables-forward-rules=false", "-v=1"]  # fmt: skip
    d = DaemonProc(host, underlay_etcd.client_url, tmp_path, *flags)
    try:
        d.start().wait_ready()
        stored = underlay_etcd.etcdctl("get", "--print-value-only", f"{PREFIX}/config").stdout
        assert stored.strip() == conf.read_text()
        [bh] = wait_for(lambda: blackholes(host), what="the blackhole route")
        assert bh["dst"] == str(d.subnet) and bh["protocol"] == "70"
        assert bh["metric"] == 0xFFFFFFFF
        host.run("ip", "route", "del", "blackhole", str(d.subnet), "proto", "70")
        wait_for(lambda: blackholes(host), timeout=10, what="the blackhole route restored")

        # The anti-spoof input chain is armed after the first full pass (so the peer set is
        # filled before anything is dropped): wait for it rather than race it under load.
        def table() -> str:
            return host.run("nft", "-j", "list", "table", "ip", "flannelish").stdout

        wait_for(lambda: '"input"' in table(), timeout=30, what="the armed input chain")
        assert '"forward"' not in table()  # --iptables-forward-rules=false: no forward chain
        log = d.log_tail(400)
        assert '"msg": "using interface", "iface": "eth0"' in log
    finally:
        d.stop()
    # SIGTERM leaves the data path, the blackhole included.
    assert blackholes(host)
