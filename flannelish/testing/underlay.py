"""An isolated L2 segment for test hosts: a bridge inside its own namespace.

    [host ns A] eth0 ──veth── hA ┐
    [host ns B] eth0 ──veth── hB ┼─ br0 (198.18.0.254/24)   [underlay ns]
    [host ns C] eth0 ──veth── hC ┘

The underlay namespace has no link to the root namespace, so nothing sent
on it can leave the machine.  The bridge's own address (.254) is where a
test etcd listens, and it is every host's default gateway, so "the
interface holding the default route" is eth0 as on a real node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannelish.testing.netns import NetnsFactory
from flannelish.testing.proc import run

UNDERLAY_NETWORK = IPv4Network("198.18.0.0/24")
UNDERLAY_NETWORK6 = IPv6Network("fd18::/64")  # the IPv6 (ULA) underlay, when asked for


@dataclass
class Host:
    name: str  # short name, e.g. "node1"
    netns: str  # full namespace name
    ip: IPv4Address
    ifname: str = "eth0"
    ip6: IPv6Address | None = None  # on an IPv6 underlay

    def run(self, *argv: str, check: bool = True, timeout: float = 30):
        return run(argv, netns=self.netns, check=check, timeout=timeout)


@dataclass
class Underlay:
    factory: NetnsFactory
    network: IPv4Network = UNDERLAY_NETWORK
    bridge: str = "br0"
    mtu: int = 1500
    netns: str = ""
    hosts: dict[str, Host] = field(default_factory=dict)
    network6: IPv6Network | None = None  # also an IPv6 underlay (e.g. UNDERLAY_NETWORK6)
    ipv4: bool = True  # False: an IPv6-only underlay (needs network6)

    @property
    def gateway(self) -> IPv4Address:
        """The bridge's address: the hosts' default gateway and the place for etcd."""
        return self.network.network_address + 254

    def create(self) -> Underlay:
        self.netns = self.factory.create("ul")
        ip = ["ip", "-n", self.netns]
        run([*ip, "link", "add", self.bridge, "type", "bridge"])
        run([*ip, "link", "set", self.bridge, "mtu", str(self.mtu), "up"])
        if self.ipv4:
            run([*ip, "addr", "add", f"{self.gateway}/{self.network.prefixlen}", "dev",
                 self.bridge])  # fmt: skip
        if self.network6 is not None:
            run([*ip, "addr", "add", f"{self.gateway6}/{self.network6.prefixlen}", "dev",
                 self.bridge, "nodad"])  # fmt: skip
        return self

    @property
    def gateway6(self) -> IPv6Address:
        assert self.network6 is not None
        return self.network6.network_address + 0xFE

    def add_host(self, short: str, index: int | None = None, mtu: int | None = None) -> Host:
        """A new host namespace whose eth0 is plugged into the underlay bridge."""
        index = index or len(self.hosts) + 1
        address = self.network.network_address + index
        netns = self.factory.create(short)
        port = f"h{index}"
        mtu = mtu or self.mtu
        ul = ["ip", "-n", self.netns]
        run([*ul, "link", "add", port, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
             "mtu", str(mtu), "netns", netns])  # fmt: skip
        run([*ul, "link", "set", port, "master", self.bridge, "up"])
        hn = ["ip", "-n", netns]
        # A real node's NIC finished DAD long before its daemon started. A fresh eth0's
        # link-local address stays tentative for 1-2 s, and until it is usable the kernel
        # sends no neighbour solicitation for packets it forwards (pods' traffic), so the
        # first cross-node packets of a just-built lab would wait a second or more.
        run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0"], netns=netns)
        run([*hn, "link", "set", "eth0", "up"])
        if self.ipv4:
            run([*hn, "addr", "add", f"{address}/{self.network.prefixlen}", "dev", "eth0"])
            run([*hn, "route", "add", "default", "via", str(self.gateway)])
        address6 = None
        if self.network6 is not None:
            address6 = self.network6.network_address + index
            run([*hn, "addr", "add", f"{address6}/{self.network6.prefixlen}", "dev", "eth0",
                 "nodad"])  # fmt: skip
            run([*hn, "-6", "route", "add", "default", "via", str(self.gateway6)])
        host = Host(short, netns, address, ip6=address6)
        self.hosts[short] = host
        return host
