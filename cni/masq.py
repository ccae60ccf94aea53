"""Per-container masquerade (bridge ``ipMasq``) with nftables, in the host netns.

Same effect as the reference bridge plugin's iptables rules (docs/cni-compat.md §7), in
an nftables table of our own so nothing else's rules are touched::

    table ip flannelish_cni
      map pods      { ipv4_addr : verdict }          # <pod ip> : jump CNI-<hash>
      chain postrouting  (nat hook)  ip saddr vmap @pods
      chain CNI-<hash>   ip daddr <subnet> accept ; ip daddr != 224.0.0.0/4 masquerade

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


def chain_name(network: str, container_id: str) -> str:
    import hashlib  # lazily: only masquerading calls pay for it

    digest = hashlib.sha512(f"{network}{container_id}".encode()).hexdigest()
    return "CNI-" + digest[:24]


def _comment(network: str, container_id: str) -> str:
    # nft strings cannot carry the reference's inner quotes; names and IDs are
    # restricted to [A-Za-z0-9_.-], so no quoting is needed inside.
    return f'"name: {network} id: {container_id}"'


def _base() -> list[str]:
    return [
        f"add table ip {TABLE}",
        f"add map ip {TABLE} pods {{ type ipv4_addr : verdict ; }}",
        f"add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat ; }}",
        # flush + re-add keeps exactly one dispatch rule however many ADDs race.
        f"flush chain ip {TABLE} postrouting",
        f"add rule ip {TABLE} postrouting ip saddr vmap @pods",
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
    """Masquerade traffic from `ips` leaving `subnets` (IPv4 only)."""
    if not ips:
        return
    chain = chain_name(network, container_id)
    comment = _comment(network, container_id)
    cmds = [*_base(), f"add chain ip {TABLE} {chain}", f"flush chain ip {TABLE} {chain}"]
    for subnet in subnets:
        cmds.append(f"add rule ip {TABLE} {chain} ip daddr {subnet} accept comment {comment}")
    cmds.append(f"add rule ip {TABLE} {chain} ip daddr != 224.0.0.0/4 masquerade comment {comment}")
    for ip in ips:
        cmds.append(f"add element ip {TABLE} pods {{ {ip} : jump {chain} }}")
    _run(nft, cmds, f"set up masquerade for {container_id}")


def teardown(network: str, container_id: str, nft: NftRunner | None = None) -> None:
    """Remove the container's chain and the map entries jumping to it, if any.

    The entries are found in the map rather than taken from the caller, so DEL
    also cleans up after an IPAM store that lost the container's addresses.
    Setup is one atomic batch, so the chain exists exactly when entries jump
    to it; with none there is nothing to do (and no table gets created).
    """
    chain = chain_name(network, container_id)
    what = f"remove masquerade of {container_id}"
    ips = [ip for ip, target in _map_entries(nft, what) if target == chain]
    if not ips:
        return
    cmds = [
        f"delete element ip {TABLE} pods {{ {', '.join(ips)} }}",
        f"flush chain ip {TABLE} {chain}",
        f"delete chain ip {TABLE} {chain}",
    ]
    _run(nft, cmds, what)


def _map_entries(nft: NftRunner | None, what: str) -> list[tuple[str, str]]:
    """(pod ip, chain) pairs of the dispatch map; empty when our table does not exist."""
    entries = []
    for item in _listing(nft, what, "map", "ip", TABLE, "pods"):
        for elem in item.get("map", {}).get("elem", []):
            key, verdict = elem
            target = verdict.get("jump", {}).get("target") if isinstance(verdict, dict) else None
            if isinstance(key, str) and target:
                entries.append((key, target))
    return entries


def exists(network: str, container_id: str, nft: NftRunner | None = None) -> bool:
    """True if the container's chain is there with its masquerade rule."""
    chain = chain_name(network, container_id)
    items = _listing(nft, f"check masquerade of {container_id}", "chain", "ip", TABLE, chain)
    return any(
        "masquerade" in expr
        for item in items
        if "rule" in item
        for expr in item["rule"].get("expr", [])
    )
