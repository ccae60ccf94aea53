"""`flannelish daemon` with bad lease values in etcd.

Before: a lease value of 5000 `[` killed the watch thread (RecursionError,
exit 1) and the daemon crash-looped at start-up while acquiring; three ~1.4 MB
values made start-up exit 4.  Now both daemons start with those values
present, program each other, log the bad keys as skipped, and a peer whose
value turns undecodable is removed from the kernel.
"""

from __future__ import annotations

import subprocess

from flannelish.testing.etcd import ETCDCTL_BIN
from flannelish.testing.proc import in_netns

from .conftest import PREFIX
from .helpers import kernel_state, wait_for
from .test_daemon_overlay import FAKE_PEER_KEY, fake_peer_value, peer_entries

DEEP = "[" * 5000
BIG = 1_400_000


def put_stdin(member, key: str, value: bytes) -> None:
    """etcdctl put with the value on stdin (a 1.4 MB argument exceeds the argv limit)."""
    argv = [ETCDCTL_BIN, f"--endpoints={member.client_url}", "put", key]
    subprocess.run(in_netns(member.netns, argv), input=value, check=True, capture_output=True)


def test_daemons_start_and_serve_peers_with_deep_and_huge_values_present(
    start_daemons, underlay_etcd
):
    underlay_etcd.etcdctl("put", f"{PREFIX}/subnets/10.244.7.0-24", DEEP)
    for i in range(3):
        pad = b"x" * BIG
        put_stdin(
            underlay_etcd,
            f"{PREFIX}/subnets/10.244.{200 + i}.0-24",
            b'{"PublicIP":"198.18.0.%d","pad":"%s"}' % (50 + i, pad),
        )
    a, b = start_daemons(2)  # each acquires (a full listing) and watches: no exit
    assert a.subnet != b.subnet
    bad = {"10.244.7.0/24", "10.244.200.0/24", "10.244.201.0/24", "10.244.202.0/24"}
    assert str(a.subnet) not in bad and str(b.subnet) not in bad
    for d, peer in ((a, b), (b, a)):
        wait_for(
            lambda d=d, peer=peer: any(
                r[0] == str(peer.subnet) for r in kernel_state(d.host)["route"]
            ),
            10,
            what="peer route",
        )
    for d in (a, b):
        log = d.log_path.read_text(errors="replace")
        assert "skipping bad lease" in log and "Traceback" not in log
        assert d.proc is not None and d.proc.poll() is None

    # Item 8: a programmed peer whose value turns undecodable is removed at once.
    mac = "0e:00:00:00:fa:01"
    underlay_etcd.etcdctl("put", FAKE_PEER_KEY, fake_peer_value(mac))
    for d in (a, b):
        wait_for(lambda d=d: all(peer_entries(kernel_state(d.host), mac)), 5, what="peer added")
    underlay_etcd.etcdctl("put", FAKE_PEER_KEY, DEEP)
    for d in (a, b):
        wait_for(
            lambda d=d: not any(peer_entries(kernel_state(d.host), mac)), 5, what="peer removed"
        )
        assert d.proc is not None and d.proc.poll() is None
