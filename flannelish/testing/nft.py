"""A fake nft for unit tests: stands in for flannelish.kernel.nft.NftCli."""

from __future__ import annotations

import re
from ipaddress import ip_address
from typing import Any

from flannelish.errors import KernelError


class FakeNft:
    """Just enough of nft's transactions and JSON listings for NftRules (one table per family).

    ``table`` is the kernel's view of the ``ip`` family's table: None (absent)
    or ``{"chains": {name: [rule comments]}, "set": set of peer addresses or
    None}``; tests read and edit it to play an operator or a crash.
    ``tables`` holds every family's (``tables["ip6"]`` for IPv6).
    ``scripts`` records every transaction.  A failing statement leaves every
    table as it was.
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Any] | None] = {}
        self.scripts: list[str] = []

    @property
    def table(self) -> dict[str, Any] | None:
        return self.tables.get("ip")

    @table.setter
    def table(self, value: dict[str, Any] | None) -> None:
        self.tables["ip"] = value

    def run(self, script: str) -> None:
        self.scripts.append(script)
        tables = {
            fam: None if t is None else {k: copy_table(v) for k, v in t.items()}
            for fam, t in self.tables.items()
        }
        for line in script.strip().splitlines():
            fam = line.split()[2]
            tables[fam] = self._statement(tables.get(fam), line)
        self.tables = tables  # all or nothing, as a transaction

    def _statement(self, t: dict[str, Any] | None, line: str) -> dict[str, Any] | None:
        words = line.split()
        verb, kind = words[0], words[1]
        if kind == "table":
            if verb == "add":
                return t or {"chains": {}, "set": None}
            if t is None:
                raise KernelError("nftables transaction failed", "No such file or directory")
            return None
        if t is None:
            raise KernelError("nftables transaction failed", "No such file or directory")
        name = words[4]
        if kind == "set":
            t["set"] = t["set"] if t["set"] is not None else set()
        elif kind == "element":
            raw = re.findall(r"[\d.a-fA-F:]+(?=[ ,}])", line.split("{")[1])
            elems = {ip_address(e) for e in raw}
            if verb == "delete" and not elems <= t["set"]:
                raise KernelError("nftables transaction failed", "No such file or directory")
            t["set"] = t["set"] | elems if verb == "add" else t["set"] - elems
        elif kind == "chain":
            if verb == "add":
                t["chains"].setdefault(name, [])
            elif verb == "flush":
                t["chains"][name] = []
            else:
                if t["chains"][name]:
                    raise KernelError("nftables transaction failed", "Device or resource busy")
                del t["chains"][name]
        elif kind == "rule":
            t["chains"][name].append(line.rsplit('comment "', 1)[1].rstrip('"'))
        return t

    def listing(self, *what: str, terse: bool = False) -> list[dict[str, Any]] | None:
        if what[0] != "table":
            raise NotImplementedError(f"FakeNft lists whole tables only, not {what}")
        family, table = what[1], what[2]
        t = self.tables.get(family)
        if t is None:
            return None
        items: list[dict[str, Any]] = [{"table": {"family": family, "name": table}}]
        if t["set"] is not None:
            elem = [] if terse else sorted(str(ip) for ip in t["set"])
            items.append({"set": {"name": "vxlan_peers", **({"elem": elem} if elem else {})}})
        for chain, comments in t["chains"].items():
            items.append({"chain": {"name": chain}})
            items += [{"rule": {"chain": chain, "comment": c, "expr": []}} for c in comments]
        return items


def copy_table(value: Any) -> Any:
    """A copy of one entry of FakeNft.table (the chains dict or the peer set)."""
    if isinstance(value, dict):
        return {k: list(v) for k, v in value.items()}
    return set(value) if isinstance(value, set) else value
