"""Network configuration: netconf JSON (+ subnet.env) -> a validated NetConf.

Two ways to get the pod range, decided by the ``ipam`` section:

* **node mode** (no ``ipam``, or a host-local ``ipam`` without ``subnet``/``ranges``):
  the range, MTU and masquerade default come from the daemon's ``subnet.env``
  the way Flannel's CNI plugin derives them (docs/flannel-compat.md §11): range =
  FLANNEL_SUBNET and/or FLANNEL_IPV6_SUBNET (one range set per family), gateway =
  each subnet's first address, MTU = FLANNEL_MTU, ipMasq = !FLANNEL_IPMASQ, routes =
  user routes + each family's pod networks via its gateway + a default route per family.
* **stand-alone mode**: a host-local style ``ipam`` (``subnet`` shorthand and/or
  ``ranges``) is used as given; any other ``ipam.type`` is delegated to that
  plugin binary on CNI_PATH.

Everything is validated here, before any kernel or disk change, so bad input
never leaves anything half-created.  Errors name the field and value (code 7).
DEL and GC must work while subnet.env is missing (the daemon may be gone), so
``load`` only insists on subnet.env for the commands that allocate.
Standard library only: the entry point reads ``daemonSocket`` from here.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any, NamedTuple

from flannelish.errors import CniCode
from flannelish.subnet_env import IncompleteSubnetEnv, PluginEnv, read_plugin_env

from .client import DEFAULT_SUBNET_FILE
from .fields import (  # noqa: F401  (IPAddress/IPNetwork: re-exported for ipam)
    IPAddress,
    IPNetwork,
    _get,
    _get_int,
    _path,
    _show,
    invalid,
    parse_cidr,
    parse_ip,
    parse_mac,
)
from .prevresult import parse_dns, parse_prev_result, parse_routes
from .protocol import CniError, check_version, is_valid_id, validate_ifname

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_BRIDGE = "cni0"


class Range(NamedTuple):
    """One host-local range: allocate from [start, end] in subnet, never the gateway."""

    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress | None

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.start.version and self.start <= ip <= self.end  # type: ignore[operator]

    def allocatable(self, ip: IPAddress) -> bool:
        """Inside the range and not the gateway, network or (IPv4) broadcast address."""
        if not self.contains(ip) or ip == self.gateway or ip == self.subnet.network_address:
            return False
        return not (ip.version == 4 and ip == self.subnet.broadcast_address)

    @classmethod
    def parse(cls, doc: Any, where: str) -> Range:
        if not isinstance(doc, dict):
            raise invalid(f'invalid "{where}": expected an object, got {_show(doc)}')
        if "subnet" not in doc:
            raise invalid(f'invalid "{where}": missing "subnet"')
        raw = doc["subnet"]
        if not isinstance(raw, str) or "/" not in raw:
            raise invalid(f'invalid "{where}.subnet": not a CIDR: {_show(raw)}')
        try:
            subnet = ipaddress.ip_network(raw, strict=True)
        except ValueError:
            loose = parse_cidr(raw, f"{where}.subnet")
            raise invalid(
                f'invalid "{where}.subnet": network {raw} has host bits set',
                f"for a prefix of length {loose.prefixlen} the network address is "
                f"{loose.network_address}",
            ) from None
        if subnet.max_prefixlen - subnet.prefixlen < 2:
            raise invalid(f'invalid "{where}.subnet": network {subnet} too small to allocate from')
        first = subnet.network_address + 1
        last = subnet.broadcast_address - (1 if subnet.version == 4 else 0)
        start = parse_ip(doc["rangeStart"], f"{where}.rangeStart") if "rangeStart" in doc else first
        end = parse_ip(doc["rangeEnd"], f"{where}.rangeEnd") if "rangeEnd" in doc else last
        for name, ip in (("rangeStart", start), ("rangeEnd", end)):
            if ip not in subnet:
                raise invalid(f'invalid "{where}.{name}": {ip} is not in network {subnet}')
        if start > end:  # type: ignore[operator]
            raise invalid(f'invalid "{where}": rangeStart {start} is after rangeEnd {end}')
        gateway = parse_ip(doc["gateway"], f"{where}.gateway") if "gateway" in doc else first
        if gateway.version != subnet.version:
            raise invalid(f'invalid "{where}.gateway": {gateway} is not in network {subnet}')
        return cls(subnet, start, end, gateway)


class IpamConf:
    """What to allocate: built-in host-local range sets, or a delegate plugin type."""

    def __init__(self, raw: dict | None = None) -> None:
        self.type = "host-local"
        self.range_sets: list[list[Range]] = []
        self.routes: list[dict] = []
        self.data_dir = DEFAULT_DATA_DIR
        self.resolv_conf = ""
        self.raw: dict = raw or {}

    @property
    def delegated(self) -> bool:
        return self.type != "host-local"


def parse_range_sets(ipam: dict) -> list[list[Range]]:
    sets: list[list[Range]] = []
    if "subnet" in ipam:
        sets.append([Range.parse(ipam, "ipam")])
    raw_sets = _get(ipam, "ranges", list, [], "ipam.")
    for i, raw_set in enumerate(raw_sets):
        if not isinstance(raw_set, list) or not raw_set:
            raise invalid(f'invalid "ipam.ranges[{i}]": expected a non-empty list of ranges')
        sets.append([Range.parse(r, f"ipam.ranges[{i}][{j}]") for j, r in enumerate(raw_set)])
    for i, rset in enumerate(sets):
        if len({r.subnet.version for r in rset}) > 1:
            raise invalid(f"range set {i} mixes IPv4 and IPv6 ranges")
        for j, other in enumerate(sets[:i]):
            if any(a.subnet.overlaps(b.subnet) for a in rset for b in other):
                raise invalid(f"range set {i} overlaps with {j}")
    return sets


def read_subnet_env(path: str) -> PluginEnv:
    """subnet.env for node mode (flannelish.subnet_env parses it); every failure is code 11.

    "Try again later" because the daemon may not have written the file yet.  The
    keys are read the way Flannel's plugin reads them (docs/flannel-compat.md §11).
    """
    hint = "Check the flannelish daemon log for this node."
    try:
        return read_plugin_env(path)
    except OSError as exc:
        raise CniError(
            CniCode.TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file: open {path}: {exc.strerror or exc}. {hint}",
        ) from None
    except IncompleteSubnetEnv as exc:
        raise CniError(
            CniCode.TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file: {path} is missing "
            f"{', '.join(exc.missing)}. {hint}",
        ) from None
    except ValueError as exc:
        raise CniError(
            CniCode.TRY_AGAIN_LATER, f"failed to load flannel 'subnet.env' file {path}: {exc}"
        ) from None


class NetConf:
    """The validated netconf; `load` fills it in field by field."""

    def __init__(self, version: str, name: str, raw: dict) -> None:
        self.version, self.name, self.raw = version, name, raw
        self.bridge = DEFAULT_BRIDGE
        self.is_gateway = True
        self.is_default_gateway = False
        self.force_address = False
        self.ip_masq = False
        self.hairpin = False
        self.promisc = False
        self.mtu = 1500
        self.dns: dict = {}
        self.ipam = IpamConf()
        self.node_mode = True
        self.subnet_file = DEFAULT_SUBNET_FILE
        self.subnet_env: PluginEnv | None = None
        self.requested_ips: list[IPAddress] = []
        self.mac: str | None = None
        self.prev_result: dict | None = None
        self.valid_attachments: list[tuple[str, str]] = []

    @property
    def store_dir(self) -> str:
        return os.path.join(self.ipam.data_dir, self.name)


def check_name(doc: dict) -> str:
    name = doc.get("name")
    if name is None or name == "":
        raise invalid("missing network name")
    if not isinstance(name, str) or not is_valid_id(name):
        raise invalid(f"invalid network name: {_show(name)}")
    return name


def _requested(doc: dict, cni_args: dict[str, str]) -> tuple[list[IPAddress], str | None]:
    """Requested IPs and MAC from CNI_ARGS < args.cni < runtimeConfig (last wins for MAC)."""
    ips: list[IPAddress] = []
    mac: str | None = None
    if cni_args.get("IP"):
        ips += [parse_ip(p, "CNI_ARGS IP") for p in cni_args["IP"].split(",") if p]
    if cni_args.get("MAC"):
        mac = parse_mac(cni_args["MAC"], "CNI_ARGS MAC")
    args = _get(doc, "args", dict, {})
    cni = _get(args, "cni", dict, {}, "args.")
    runtime = _get(doc, "runtimeConfig", dict, {})
    for where, section in (("args.cni.", cni), ("runtimeConfig.", runtime)):
        for i, ip in enumerate(_get(section, "ips", list, [], where)):
            ips.append(parse_ip(ip, f"{where}ips[{i}]"))
        if section.get("mac"):
            mac = parse_mac(section["mac"], f"{where}mac")
    unique: list[IPAddress] = []
    for ip in ips:
        if ip not in unique:
            unique.append(ip)
    return unique, mac


def load(doc: dict, command: str, cni_args: dict[str, str] | None = None) -> NetConf:
    """Validate the whole netconf for `command`; raises CniError (code 1, 2 or 7)."""
    version = check_version(doc.get("cniVersion"))
    name = check_name(doc)
    conf = NetConf(version=version, name=name, raw=doc)
    conf.bridge = _get(doc, "bridge", str, DEFAULT_BRIDGE)
    try:
        validate_ifname(conf.bridge, "bridge name")
    except CniError as exc:
        raise invalid(f'invalid "bridge": {exc.msg}', conf.bridge) from None
    conf.is_default_gateway = _get(doc, "isDefaultGateway", bool, False)
    conf.is_gateway = _get(doc, "isGateway", bool, True) or conf.is_default_gateway
    conf.force_address = _get(doc, "forceAddress", bool, False)
    conf.hairpin = _get(doc, "hairpinMode", bool, False)
    conf.promisc = _get(doc, "promiscMode", bool, False)
    if conf.hairpin and conf.promisc:
        raise invalid("cannot set hairpin mode and promiscuous mode at the same time")
    for key in ("vlan", "vlanTrunk", "macspoofchk"):
        if doc.get(key):
            raise CniError(
                CniCode.UNSUPPORTED_FIELD,
                f'unsupported config field "{key}": {_show(doc[key])}',
                "flannelish-cni does not implement it",
            )
    conf.dns = parse_dns(doc.get("dns"), "dns")
    conf.subnet_file = _path(doc, "subnetFile", DEFAULT_SUBNET_FILE) or DEFAULT_SUBNET_FILE
    _path(doc, "daemonSocket", "")
    try:
        conf.prev_result = parse_prev_result(doc.get("prevResult"))
    except CniError:
        if command in ("ADD", "CHECK"):
            raise
        # DEL must not fail (and leak) over a cached result it does not even read.
        conf.prev_result = None
    conf.requested_ips, conf.mac = _requested(doc, cni_args or {})

    ipam_doc = _get(doc, "ipam", dict, None)
    ipam = IpamConf(raw=ipam_doc or {})
    if ipam_doc is not None:
        ipam.type = _get(ipam_doc, "type", str, "host-local", "ipam.") or "host-local"
        if "/" in ipam.type or ipam.type in (".", ".."):
            raise invalid(f'invalid "ipam.type": {_show(ipam.type)}')
        ipam.data_dir = _path(ipam_doc, "dataDir", DEFAULT_DATA_DIR, "ipam.") or DEFAULT_DATA_DIR
        ipam.resolv_conf = _path(ipam_doc, "resolvConf", "", "ipam.")
        if not ipam.delegated:
            ipam.routes = parse_routes(ipam_doc.get("routes"), "ipam.routes")
            ipam.range_sets = parse_range_sets(ipam_doc)
    conf.ipam = ipam
    conf.node_mode = not ipam.delegated and not ipam.range_sets

    masq = _get(doc, "ipMasq", bool, None)
    mtu = _get(doc, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise invalid(f'invalid "mtu": {mtu} is outside 68..65535')
    if conf.node_mode:
        try:
            conf.subnet_env = read_subnet_env(conf.subnet_file)
        except CniError:
            # DEL and GC release by container ID and need no range: they must
            # work while the daemon (and its subnet.env) is gone.
            if command in ("ADD", "CHECK", "STATUS"):
                raise
        env = conf.subnet_env
        if env is not None:
            ipam.range_sets, ipam.routes = _node_ranges(env, ipam.routes)
            masq = (not env.ipmasq) if masq is None else masq
            mtu = env.mtu if mtu is None else mtu
    conf.ip_masq = bool(masq)
    conf.mtu = mtu or 1500
    if not 68 <= conf.mtu <= 65535:  # only subnet.env's FLANNEL_MTU can get here unchecked
        raise CniError(
            CniCode.TRY_AGAIN_LATER,
            f"failed to load flannel 'subnet.env' file {conf.subnet_file}: "
            f"FLANNEL_MTU {conf.mtu} is outside 68..65535",
        )

    if command == "GC":
        conf.valid_attachments = _attachments(doc)
    return conf


def _node_ranges(env: PluginEnv, user_routes: list[dict]) -> tuple[list[list[Range]], list[dict]]:
    """Node mode: one range set per subnet.env subnet (IPv4 first), and the routes.

    Per family: the subnet with its first address as gateway, every pod network
    of that family via the gateway, and a default route via the gateway
    (docs/flannel-compat.md §11).  Dual stack gives two range sets, so a pod
    gets one address of each family, as host-local with two ``ranges``.
    """
    sets: list[list[Range]] = []
    routes = list(user_routes)
    defaults = []
    for subnet in env.subnets:
        gateway = subnet.network_address + 1
        sets.append([Range(subnet, gateway, _last(subnet), gateway)])
        routes += [
            {"dst": str(n), "gw": str(gateway)} for n in env.networks if n.version == subnet.version
        ]
        default = "0.0.0.0/0" if subnet.version == 4 else "::/0"
        defaults.append({"dst": default, "gw": str(gateway)})
    return sets, routes + defaults


def _last(subnet: IPNetwork) -> IPAddress:
    return subnet.broadcast_address - (1 if subnet.version == 4 else 0)


def _attachments(doc: dict) -> list[tuple[str, str]]:
    raw = doc.get("cni.dev/valid-attachments", doc.get("cni.dev/attachments", []))
    if not isinstance(raw, list):
        raise invalid(f'invalid "cni.dev/valid-attachments": expected a list, got {_show(raw)}')
    result = []
    for i, item in enumerate(raw):
        # Every entry must be an attachment ADD could have made: a malformed one
        # fails the whole GC before anything is released (fail safe).
        if not isinstance(item, dict) or not is_valid_id(item.get("containerID")):
            raise invalid(f'invalid "cni.dev/valid-attachments[{i}]": {_show(item)}')
        ifname = item.get("ifname", "")
        if not isinstance(ifname, str):
            ifname = ""
        if ifname:
            try:
                validate_ifname(ifname)
            except CniError as exc:
                raise invalid(
                    f'invalid "cni.dev/valid-attachments[{i}].ifname": {exc.msg}', ifname
                ) from None
        result.append((item["containerID"], ifname))
    return result
