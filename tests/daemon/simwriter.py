"""etcd writer for simulated peers, run by the drills inside the underlay namespace.

The test process cannot reach an etcd that listens on the isolated underlay,
so it starts this script there (``ip netns exec <ul> python simwriter.py
ENDPOINTS``) and drives it over stdin/stdout, one JSON object per line.  It
uses flannelish's own etcd client (EtcdStore: failover between members,
retries), so the writes survive a killed or frozen member like a node's would.

Requests and answers::

    {"op": "put", "items": [[key, value], ...]}        -> {"ok": true, "n": N}
    {"op": "del", "keys": [key, ...]}                  -> {"ok": true, "n": N}
    {"op": "run", "rate": R, "ops": [["put", k, v] | ["del", k], ...]}
        paced at R operations per second            -> {"ok": true, "n": N, "seconds": S,
                                                         "max_lag": L, "slow": K}
    {"op": "list", "prefix": P}                        -> {"ok": true, "kvs": [[k, v], ...]}
    {"op": "quit"}

Every put carries one etcd lease (TTL 900 s) granted at start, as a live
node's lease key does.  Errors are answered as {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from flannelish.subnet.etcdstore import EtcdOptions, EtcdStore

LEASE_TTL = 900


def main() -> int:
    store = EtcdStore(EtcdOptions.from_flags(sys.argv[1]), timeout=3.0, retry_window=20.0)
    lease_id, _ = store.grant(LEASE_TTL)

    def put(key: str, value: str) -> None:
        store.put(key, value.encode(), lease_id=lease_id)

    def do(op: list[Any]) -> None:
        if op[0] == "put":
            put(op[1], op[2])
        else:
            store.delete(op[1])

    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "quit":
                break
            if req["op"] == "put":
                for key, value in req["items"]:
                    put(key, value)
                answer: dict[str, Any] = {"n": len(req["items"])}
            elif req["op"] == "del":
                for key in req["keys"]:
                    store.delete(key)
                answer = {"n": len(req["keys"])}
            elif req["op"] == "run":
                interval = 1.0 / float(req["rate"])
                started = time.monotonic()
                max_lag, slow = 0.0, 0
                for i, op in enumerate(req["ops"]):
                    due = started + i * interval
                    now = time.monotonic()
                    if now < due:
                        time.sleep(due - now)
                    else:
                        lag = now - due
                        max_lag = max(max_lag, lag)
                        slow += lag > 0.1
                    do(op)
                answer = {
                    "n": len(req["ops"]),
                    "seconds": round(time.monotonic() - started, 3),
                    "max_lag": round(max_lag, 3),
                    "slow": slow,
                }
            elif req["op"] == "list":
                kvs, _ = store.get_prefix(req["prefix"])
                answer = {"kvs": [[kv.key, kv.value.decode()] for kv in kvs]}
            else:
                raise ValueError(f"unknown op {req['op']!r}")
            print(json.dumps({"ok": True, **answer}), flush=True)
        except Exception as exc:  # reported to the test, which fails with it
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
