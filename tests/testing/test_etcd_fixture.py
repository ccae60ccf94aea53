"""The etcd fixtures start real servers and leave nothing behind.

Only the underlay case needs root (a namespace); the others need only etcd.
"""

from pathlib import Path

import pytest

from flannelish.testing.etcd import start_etcd
from flannelish.testing.proc import pid_alive


@pytest.mark.etcd
def test_etcd_fixture_serves_reads_and_writes(etcd):
    etcd.etcdctl("put", "/flt/key", "value")
    assert etcd.etcdctl("get", "--print-value-only", "/flt/key").stdout.strip() == "value"
    assert etcd.client_url.startswith("http://127.0.0.1:")


@pytest.mark.etcd
def test_stopped_etcd_leaves_no_process_and_no_data_dir():
    member = start_etcd(name="leak-check")
    pid = member.proc.pid
    data_dir = Path(member.data_dir)
    assert pid_alive(pid) and data_dir.exists()
    member.destroy()
    assert not pid_alive(pid)
    assert not data_dir.parent.exists()
    member.destroy()  # idempotent


def test_etcd_can_listen_on_the_underlay_inside_its_namespace(underlay, underlay_etcd):
    host = underlay.add_host("node1")
    assert underlay_etcd.client_url == f"http://{underlay.gateway}:{underlay_etcd.client_port}"
    result = host.run(
        "etcdctl", f"--endpoints={underlay_etcd.client_url}", "put", "/flt/from-host", "1"
    )
    assert result.stdout.strip() == "OK"


@pytest.mark.etcd
def test_three_member_cluster_keeps_serving_with_one_member_stopped(etcd_cluster):
    first, second, third = etcd_cluster.members
    first.etcdctl("put", "/flt/a", "1")
    first.stop()
    assert second.etcdctl("get", "--print-value-only", "/flt/a").stdout.strip() == "1"
    third.etcdctl("put", "/flt/b", "2")
    first.start(initial_cluster=None, cluster_state="existing")
    first.wait_healthy()
    assert first.etcdctl("get", "--print-value-only", "/flt/b").stdout.strip() == "2"
