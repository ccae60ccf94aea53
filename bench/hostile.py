"""Benchmark: the hostile-etcd suite, flannelish next to flanneld.

The same checks as tests/daemon/test_hostile_etcd.py (flannelish.testing.hostile):
bad leases of every kind written into a live network with one daemon under
test, then deleted, then a restart with them present, and good leases that
must be applied within 1 s meanwhile.  Each backend gets a fresh underlay,
etcd and node namespaces per daemon.  The flanneld column appears when
FLANNELD_BIN names a flanneld binary (e.g. /usr/local/bin/flanneld, built by
../shared/tools/flanneld/build.sh); it runs with flanneld's own flags inside
the node namespace.  Rows flanneld has no endpoint for (/status, /metrics)
are n/a and not counted.

Run as root: ``.venv/bin/python bench/hostile.py [--backend vxlan|host-gw|both]
[--only flannelish|flanneld] [--details]``.  It reports and always exits 0 (the test is what fails).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flannelish.testing.etcd import start_etcd
from flannelish.testing.hostile import (
    BACKENDS,
    DaemonUnderTest,
    FlanneldDaemon,
    FlannelishDaemon,
    HostileSuite,
    Results,
    render_table,
)
from flannelish.testing.netns import NetnsFactory
from flannelish.testing.underlay import Host, Underlay

Maker = Callable[[Host, str, Path], DaemonUnderTest]


def run_one(backend: str, make: Maker, workdir: Path) -> Results:
    """One backend, one daemon, in namespaces of its own (all removed again)."""
    factory = NetnsFactory("flbh")
    factory.remove_leftovers()
    try:
        underlay = Underlay(factory).create()
        etcd = start_etcd(name="hostile", host=str(underlay.gateway), netns=underlay.netns)
        try:
            suite = HostileSuite(
                backend, factory, underlay, underlay.netns, etcd.client_url, workdir, make
            )
            return suite.run()
        finally:
            etcd.destroy()
    except Exception as exc:  # a harness or start-up failure is one failed row, not a crash
        results = Results()
        results.add("suite ran to the end", False, f"{type(exc).__name__}: {exc}"[:400])
        return results
    finally:
        factory.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--only", choices=["flannelish", "flanneld"], help="one column only")
    parser.add_argument("--details", action="store_true", help="print every failed row's reason")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/hostile.py needs root (it creates network namespaces)")
        return 2
    daemons: dict[str, Maker] = {"flannelish": FlannelishDaemon}
    flanneld = os.environ.get("FLANNELD_BIN", "")
    if not flanneld:
        print("flanneld column skipped: FLANNELD_BIN is not set (e.g. /usr/local/bin/flanneld)")
    elif not os.access(flanneld, os.X_OK):
        print(f"flanneld column skipped: FLANNELD_BIN={flanneld} is not an executable file")
    else:

        def make_flanneld(host: Host, endpoint: str, workdir: Path) -> DaemonUnderTest:
            return FlanneldDaemon(host, endpoint, workdir, flanneld)

        daemons["flanneld"] = make_flanneld
    if args.only:
        daemons = {k: v for k, v in daemons.items() if k == args.only}
    backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    root = Path(tempfile.mkdtemp(prefix="flannelish-hostile-"))
    try:
        for backend in backends:
            columns: dict[str, Results] = {}
            for name, make in daemons.items():
                started = time.monotonic()
                columns[name] = run_one(backend, make, root / backend / name)
                took = time.monotonic() - started
                print(f"  {backend} / {name}: {took:.0f}s", file=sys.stderr)
            print(f"\nhostile etcd, backend {backend}")
            print(render_table(columns, details=args.details))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
