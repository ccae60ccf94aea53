"""etcd recreated WITHOUT its data under two running daemons (restored from scratch)."""

from __future__ import annotations

import json
import shutil
import time

from .conftest import PREFIX
from .helpers import CONFIG, add_pod, kernel_state, ping, wait_for


def leases(etcd) -> dict[str, tuple[str, str]]:
    """subnet key -> (PublicIP, VtepMAC) as stored in etcd."""
    lines = etcd.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
    out = {}
    for key, value in zip(lines[::2], lines[1::2], strict=True):
        data = json.loads(value)
        out[key.rsplit("/", 1)[1]] = (data["PublicIP"], data["BackendData"]["VtepMAC"])
    return out


def routes_to(host, subnet) -> bool:
    return any(r[0] == str(subnet) for r in kernel_state(host)["route"])


def test_etcd_recreated_empty_leases_come_back_and_pods_keep_talking(
    start_daemons, netns_factory, underlay_etcd
):
    a, b = start_daemons(2)
    for x, y in ((a, b), (b, a)):
        wait_for(lambda x=x, y=y: routes_to(x.host, y.subnet), 10, what="peer programmed")
    pa = add_pod(netns_factory, a.host, a.subnet, "pa", 1450)
    pb = add_pod(netns_factory, b.host, b.subnet, "pb", 1450)
    assert ping(pa, b.subnet.network_address + 2) and ping(pb, a.subnet.network_address + 2)
    before = leases(underlay_etcd)
    assert len(before) == 2

    # A new, empty cluster on the same endpoint.
    underlay_etcd.stop()
    assert underlay_etcd.data_dir is not None
    shutil.rmtree(underlay_etcd.data_dir)
    underlay_etcd.start()
    underlay_etcd.wait_healthy()
    assert leases(underlay_etcd) == {}

    # No network config yet: the daemons wait, keep running and keep their data path.
    time.sleep(3.0)
    for d, other, pod in ((a, b, pa), (b, a, pb)):
        assert d.proc is not None and d.proc.poll() is None, d.log_tail()
        assert routes_to(d.host, other.subnet), "peer route removed while etcd was empty"
        assert ping(pod, other.subnet.network_address + 2), "data path broke while etcd was empty"
    wait_for(
        lambda: all(f"{PREFIX}/config" in d.log_path.read_text() for d in (a, b)),
        10,
        what="daemons naming the config key they wait for",
    )

    underlay_etcd.etcdctl("put", f"{PREFIX}/config", CONFIG)  # the operator restores the config
    wait_for(lambda: leases(underlay_etcd) == before, 15, 0.2, "both leases back, same subnets")
    for d, other, pod in ((a, b, pa), (b, a, pb)):
        wait_for(lambda d=d, o=other: routes_to(d.host, o.subnet), 10, what="route to the peer")
        assert ping(pod, other.subnet.network_address + 2)
        assert d.proc is not None and d.proc.poll() is None, d.log_tail()
        log = d.log_path.read_text()
        assert "ETCD WAS RECREATED WITHOUT ITS DATA" in log or "own-lease check" in log
        assert "re-acquired the same subnet" in log
