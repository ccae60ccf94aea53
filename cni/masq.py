"""Per-container masquerade (bridge ``ipMasq``) with nftables, in the host netns.

Same effect as the reference bridge plugin's iptables rules (docs/cni-compat.md §7), in
an nftables table of our own so nothing else's rules are touched::

    table ip flannelish_cni
      map pods      { ipv4_addr : verdict }          # <pod ip> : jump CNI-<hash>
      chain postrouting  (nat hook)  ip saddr vmap @pods
      chain CNI-<hash>   ip daddr <subnet> accept ; ip daddr != 224.0.0.0/4 masquerade

and the same for IPv6 pods in ``table ip6 flannelish_cni`` (``ipv6_addr`` keys,
``ip6 daddr``, multicast ``ff00::/8``), created only when a pod has an IPv6
address; a dual-stack pod's chain exists in both tables, written in one batch.

``CNI-<hash>`` is the reference's name: "CNI-" + the first 24 hex digits of
SHA-512(<network name><container ID>).  Every change is one ``nft -f -``
batch, which the kernel applies atomically, so concurrent ADDs/DELs cannot
interleave.  nft 1.0.6 has no "destroy", so removal first lists the map to find what is
there: DEL stays idempotent and never creates the table on a host that did
not masquerade.
The nft process inherits the calling thread's network namespace.  ``nft`` is
run through flannelish.kernel.nft (a fake can be passed as ``nft=``); its
errors are mapped here so the plugin's error codes stay what they always were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from flannelish.errors import KernelError, NotAvailableError

if TYPE_CHECKING:
    from flannelish.kernel.nft import NftRunner

TABLE = "flannelish_cni"
FAMILIES = ("ip", "ip6")
_KEY = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}
_MULTICAST = {"ip": "224.0.0.0/4", "ip6": "ff00::/8"}


def _family(address: str) -> str:
    return "ip6" if ":" in address else "ip"


def chain_name(network: str, container_id: str) -> str:
    import hashlib  # lazily: only masquerading calls pay for it

    digest = hashlib.sha512(f"{network}{container_id}".encode()).hexdigest()
    return "CNI-" + digest[:24]


def _comment(network: str, container_id: str) -> str:
    # nft strings cannot carry the reference's inner quotes; names and IDs are
    # restricted to [A-Za-z0-9_.-], so no quoting is needed inside.
    return f'"name: {network} id: {container_id}"'


def _base(fam: str = "ip") -> list[str]:
    t = f"{fam} {TABLE}"
    return [
        f"add table {t}",
        f"add map {t} pods {{ type {_KEY[fam]} : verdict ; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; }}",
        # flush + re-add keeps exactly one dispatch rule however many ADDs race.
        f"flush chain {t} postrouting",
        f"add rule {t} postrouting {fam} saddr vmap @pods",
    ]


@contextlib.contextmanager
def _missing_nft_is_internal(what: str) -> Iterator[None]:
    # The plugin has always reported a missing nft as an internal error (code
    # 999); passing NotAvailableError on would turn it into 11, "try again later".
    try:
        yield
    except NotAvailableError as exc:
        raise KernelError(f"{what}: {exc}") from None


def _runner(nft: NftRunner | None) -> NftRunner:
    from flannelish.kernel.nft import NftCli  # lazily: only masquerading calls pay for it

    return nft or NftCli()


def _run(nft: NftRunner | None, commands: list[str], what: str) -> None:
    with _missing_nft_is_internal(what):
        try:
            _runner(nft).run("\n".join(commands) + "\n")
        except KernelError as exc:
            raise KernelError(f"{what}: nft failed: {exc.details or ''}") from None


def _listing(nft: NftRunner | None, what: str, *obj: str) -> list[dict]:
    """`nft -j list <obj>` items; [] when it is absent or cannot be listed.

    DEL must stay idempotent and CHECK must answer, so a listing that fails
    counts as "nothing of ours there".
    """
    with _missing_nft_is_internal(what):
        try:
            return _runner(nft).listing(*obj) or []
        except KernelError:
            return []


def setup(
    network: str,
    container_id: str,
    ips: list[str],
    subnets: list[str],
    nft: NftRunner | None = None,
) -> None:
    """Masquerade traffic from `ips` leaving `subnets`, per family (IPv4 and IPv6).

    Traffic to a subnet of the pod's own family is never masqueraded.
    """
    if not ips:
        return
    chain = chain_name(network, container_id)
    comment = _comment(network, container_id)
    cmds: list[str] = []
    for fam in FAMILIES:
        mine = [ip for ip in ips if _family(ip) == fam]
        if not mine:
            continue
        t = f"{fam} {TABLE}"
        cmds += [*_base(fam), f"add chain {t} {chain}", f"flush chain {t} {chain}"]
        for subnet in subnets:
            if _family(subnet) == fam:
                cmds.append(f"add rule {t} {chain} {fam} daddr {subnet} accept comment {comment}")
        cmds.append(
            f"add rule {t} {chain} {fam} daddr != {_MULTICAST[fam]} masquerade comment {comment}"
        )
        for ip in mine:
            cmds.append(f"add element {t} pods {{ {ip} : jump {chain} }}")
    _run(nft, cmds, f"set up masquerade for {container_id}")


def teardown(
    network: str,
    container_id: str,
    nft: NftRunner | None = None,
    families: tuple[str, ...] = FAMILIES,
) -> None:
    """Remove the container's chains and the map entries jumping to them, if any.

    The entries are found in the maps rather than taken from the caller, so DEL
    also cleans up after an IPAM store that lost the container's addresses.
    Setup is one atomic batch, so a chain exists exactly when entries jump
    to it; with none there is nothing to do (and no table gets created).
    ``families``: the tables to look in (one ``nft`` listing each).
    """
    chain = chain_name(network, container_id)
    what = f"remove masquerade of {container_id}"
    cmds = []
    for fam in families:
        ips = [ip for ip, target in _map_entries(nft, what, fam) if target == chain]
        if ips:
            t = f"{fam} {TABLE}"
            cmds += [
                f"delete element {t} pods {{ {', '.join(ips)} }}",
                f"flush chain {t} {chain}",
                f"delete chain {t} {chain}",
            ]
    if cmds:
        _run(nft, cmds, what)


def _map_entries(nft: NftRunner | None, what: str, fam: str = "ip") -> list[tuple[str, str]]:
    """(pod ip, chain) pairs of the dispatch map; empty when our table does not exist."""
    entries = []
    for item in _listing(nft, what, "map", fam, TABLE, "pods"):
        for elem in item.get("map", {}).get("elem", []):
            key, verdict = elem
            target = verdict.get("jump", {}).get("target") if isinstance(verdict, dict) else None
            if isinstance(key, str) and target:
                entries.append((key, target))
    return entries


def exists(
    network: str, container_id: str, nft: NftRunner | None = None, family: str = "ip"
) -> bool:
    """True if the container's chain is there with its masquerade rule (in `family`'s table)."""
    chain = chain_name(network, container_id)
    items = _listing(nft, f"check masquerade of {container_id}", "chain", family, TABLE, chain)
    return any(
        "masquerade" in expr
        for item in items
        if "rule" in item
        for expr in item["rule"].get("expr", [])
    )
