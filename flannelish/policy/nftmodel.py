"""A small evaluator of the compiled ruleset: what the kernel would do with a new packet.

Used by the property test to check that ``compile`` + nft semantics give the
verdict of ``evaluate`` (the policy model).  It interprets the same IR that
``compile.render`` writes: set membership (exact, interval, concatenated),
jump/return, accept/drop, the base chain's policy accept.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from .compile import PROTO_NAMES, Compiled, Cond

MAX_DEPTH = 16  # the kernel allows 16 nested jumps; we use at most 8


def _parsed(c: Compiled, name: str) -> list:
    cache = c.__dict__.setdefault("_nftmodel_sets", {})
    if name not in cache:
        cache[name] = [ip_network(e) for e in c.elements.get(name, ())]
    return cache[name]


def _in_set(c: Compiled, name: str, ip: str) -> bool:
    addr = ip_address(ip)
    return any(net.version == addr.version and addr in net for net in _parsed(c, name))


def _cond(c: Compiled, cond: Cond, pkt: dict) -> bool:
    if cond.what == "established":
        return bool(pkt.get("established"))
    if cond.what == "never":
        return False
    if cond.what == "nfproto":
        return ip_address(pkt["src"]).version == cond.family
    if cond.what == "saddr":
        return _in_set(c, cond.set, pkt["src"])
    if cond.what == "daddr":
        return _in_set(c, cond.set, pkt["dst"])
    proto = PROTO_NAMES.get(pkt["proto"], pkt["proto"].lower())
    if cond.what == "ports":
        return any(p == proto and lo <= pkt["port"] <= hi for p, lo, hi in cond.ports)
    # daddr_port
    key = f"{ip_address(pkt['dst'])} . {proto} . {pkt['port']}"
    return key in c.elements.get(cond.set, ())


def verdict(
    c: Compiled, src: str, dst: str, proto: str, port: int, established: bool = False
) -> str:
    """ "accept" or "drop" for one forwarded packet (protocol TCP/UDP/SCTP/ICMP)."""
    pkt = {"src": src, "dst": dst, "proto": proto, "port": port, "established": established}
    # every rule of an inet chain sees both families (as in the kernel): a rule
    # meant for one family must say so in its conditions
    chains: dict[str, list] = {}
    for r in c.rules:
        chains.setdefault(r.chain, []).append(r)

    def run(chain: str, depth: int) -> str | None:
        if depth > MAX_DEPTH:
            raise RuntimeError("jump loop")
        for r in chains.get(chain, []):
            if all(_cond(c, cond, pkt) for cond in r.conds):
                if r.verdict.startswith("jump "):
                    result = run(r.verdict.split()[1], depth + 1)
                    if result is not None:
                        return result
                    continue
                if r.verdict.startswith("goto "):  # replaces this chain: its end returns for it
                    return run(r.verdict.split()[1], depth + 1)
                if r.verdict == "return":
                    return None
                return r.verdict
        return None

    return run("forward", 0) or "accept"
