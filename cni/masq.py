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
The nft process inherits the calling thread's network namespace.
"""

from __future__ import annotations

from flannelish.errors import KernelError

TABLE = "flannelish_cni"
NFT = "nft"


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


def _run(commands: list[str], what: str) -> None:
    import subprocess

    proc = subprocess.run(
        [NFT, "-f", "-"],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise KernelError(f"{what}: nft failed: {proc.stderr.strip()}")


def setup(network: str, container_id: str, ips: list[str], subnets: list[str]) -> None:
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
    _run(cmds, f"set up masquerade for {container_id}")


def teardown(network: str, container_id: str) -> None:
    """Remove the container's chain and the map entries jumping to it, if any.

    The entries are found in the map rather than taken from the caller, so DEL
    also cleans up after an IPAM store that lost the container's addresses.
    Setup is one atomic batch, so the chain exists exactly when entries jump
    to it; with none there is nothing to do (and no table gets created).
    """
    chain = chain_name(network, container_id)
    ips = [ip for ip, target in _map_entries() if target == chain]
    if not ips:
        return
    cmds = [
        f"delete element ip {TABLE} pods {{ {', '.join(ips)} }}",
        f"flush chain ip {TABLE} {chain}",
        f"delete chain ip {TABLE} {chain}",
    ]
    _run(cmds, f"remove masquerade of {container_id}")


def _map_entries() -> list[tuple[str, str]]:
    """(pod ip, chain) pairs of the dispatch map; empty when our table does not exist."""
    import json
    import subprocess

    proc = subprocess.run(
        [NFT, "-j", "list", "map", "ip", TABLE, "pods"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return []
    entries = []
    for item in json.loads(proc.stdout).get("nftables", []):
        for elem in item.get("map", {}).get("elem", []):
            key, verdict = elem
            target = verdict.get("jump", {}).get("target") if isinstance(verdict, dict) else None
            if isinstance(key, str) and target:
                entries.append((key, target))
    return entries


def exists(network: str, container_id: str) -> bool:
    return _chain_exists(chain_name(network, container_id), need_rules=True)


def _chain_exists(chain: str, need_rules: bool = False) -> bool:
    import subprocess

    proc = subprocess.run(
        [NFT, "list", "chain", "ip", TABLE, chain],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and (not need_rules or "masquerade" in proc.stdout)
