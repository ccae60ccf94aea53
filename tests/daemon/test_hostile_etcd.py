"""The hostile-etcd suite, on both backends.

Bad leases of every kind the issue names are written, with an etcd lease as a
node would, into a live network: real etcd on the underlay, one real
`flannelish daemon` under test in its node namespace, a good peer node with a
pod (programmed statically, so no bad lease can break it) and a cross-node
ping.  Each check is a named row; the test fails listing every failed row.
The checks live in flannelish.testing.hostile, shared with bench/hostile.py
(which adds a flanneld column).  The test measures: nothing is xfail.
"""

from __future__ import annotations

import pytest

from flannelish.testing.hostile import FlannelishDaemon, HostileSuite, render_table

pytestmark = pytest.mark.slow  # real daemon, about 30 s per backend


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_hostile_etcd(backend, netns_factory, underlay, underlay_etcd, tmp_path):
    suite = HostileSuite(
        backend,
        netns_factory,
        underlay,
        underlay.netns,
        underlay_etcd.client_url,
        tmp_path,
        FlannelishDaemon,
    )
    results = suite.run()
    table = render_table({"flannelish": results})
    print(f"\nhostile etcd, {backend}:\n{table}")
    failed = results.failed
    assert not failed, (
        f"{len(failed)} of {len(results.rows)} hostile-etcd checks failed ({backend}):\n"
        + "\n".join(f"  FAIL {r.name}: {r.detail}" for r in failed)
        + f"\n\n{table}"
    )
