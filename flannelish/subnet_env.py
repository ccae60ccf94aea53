"""subnet.env: the file the daemon hands to the CNI plugin, and its only parser.

The format is Flannel's exactly (docs/flannel-compat.md §6): ``KEY=value``
lines, no quotes, no comments, in a fixed order.  The daemon writes it
atomically (temp file in the same directory, fsync, rename) with mode 0644
whatever the umask, so a reader never sees half a file.  Everything that
reads it goes through here: the daemon (its previous subnet), ``flannelish
doctor``, the lab and the CNI plugin.

Two readings of the same ``KEY=value`` lines, because the two readers need
different things:

* :func:`read_subnet_env` (daemon, doctor) is lenient like Flannel's dotenv
  parser: unknown keys are kept, a key given as a comma list is ignored.
* :func:`read_plugin_env` (CNI plugin) insists on the keys Flannel's plugin
  needs (a network and a subnet of either family, MTU, IPMASQ) and takes
  FLANNEL_NETWORK / FLANNEL_IPV6_NETWORK as comma lists (§11 there).

Standard library only and cheap to import (``tempfile`` is imported by the
writer when it runs; no ``dataclasses`` or ``pathlib``): the CNI plugin
imports this module on its in-process path, where start-up time matters.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import NamedTuple

from flannelish.errors import ConfigError, KernelError

# What the CNI plugin cannot work without (the keys Flannel's plugin requires): each
# entry is one requirement, met by any of its keys (IPv4, IPv6 or both: dual stack).
PLUGIN_KEYS = (
    ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"),
    ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"),
    ("FLANNEL_MTU",),
    ("FLANNEL_IPMASQ",),
)


class SubnetEnv(NamedTuple):
    """The file as the daemon writes it."""

    network: IPv4Network | None
    subnet: IPv4Network | None  # the lease; written as its first host address
    mtu: int
    ipmasq: bool
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None

    def render(self) -> str:
        lines = []
        if self.network is not None:
            lines.append(f"FLANNEL_NETWORK={self.network}")
        if self.subnet is not None:
            lines.append(
                f"FLANNEL_SUBNET={self.subnet.network_address + 1}/{self.subnet.prefixlen}"
            )
        if self.ipv6_network is not None:
            lines.append(f"FLANNEL_IPV6_NETWORK={self.ipv6_network}")
        if self.ipv6_subnet is not None:
            first = self.ipv6_subnet.network_address + 1
            lines.append(f"FLANNEL_IPV6_SUBNET={first}/{self.ipv6_subnet.prefixlen}")
        lines.append(f"FLANNEL_MTU={self.mtu}")
        lines.append(f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}")
        return "".join(f"{line}\n" for line in lines)


class PluginEnv(NamedTuple):
    """What the CNI plugin derives a pod's range, MTU and masquerade default from."""

    networks: list[IPv4Network | IPv6Network]  # FLANNEL_NETWORK then FLANNEL_IPV6_NETWORK entries
    subnets: list[IPv4Network | IPv6Network]  # the node's subnets: IPv4 first, then IPv6
    mtu: int
    ipmasq: bool  # the daemon masquerades, so the plugin need not

    @property
    def subnet(self) -> IPv4Network | IPv6Network:
        """The first of `subnets` (the IPv4 one in dual stack)."""
        return self.subnets[0]


class IncompleteSubnetEnv(ValueError):
    """The file lacks keys the CNI plugin needs (the daemon may still be writing its first)."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(f"missing {', '.join(missing)}")
        self.missing = missing


def write_subnet_env(path: str | os.PathLike[str], env: SubnetEnv) -> None:
    """Atomically replace `path` with `env`; parent directories are created 0755."""
    import tempfile  # only the daemon writes; the CNI plugin must not pay for this import

    target = os.fspath(path)
    directory = os.path.dirname(target) or "."
    data = env.render().encode()
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", dir=directory)
    except OSError as exc:
        raise KernelError(f"cannot write subnet file {target}", exc.strerror) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers (the CNI plugin) need 0644
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KernelError(f"cannot write subnet file {target}", exc.strerror) from None


def parse_subnet_env_text(text: str) -> dict[str, str]:
    """KEY=value lines; blank lines and #comments skipped, split at the first '='."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


MAX_FILE_BYTES = 64 * 1024  # the daemon writes ~150 bytes; a netconf may point anywhere


def read_subnet_env_values(path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's KEY=value pairs; raises OSError (FileNotFoundError if absent).

    At most MAX_FILE_BYTES are read: ``subnetFile: /dev/zero`` must not fill memory.
    """
    with open(path, encoding="utf-8") as handle:
        text = handle.read(MAX_FILE_BYTES + 1)
    if len(text) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES} bytes: not a subnet.env")
    return parse_subnet_env_text(text)


def read_subnet_env(path: str | os.PathLike[str]) -> SubnetEnv | None:
    """The file's contents, or None if it does not exist.

    A malformed value raises ConfigError naming the key and the file.
    """
    target = os.fspath(path)
    try:
        values = read_subnet_env_values(target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read subnet file {target}", exc.strerror) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{target} is not UTF-8 text") from None

    def single(key: str, kind: type) -> object | None:
        value = values.get(key)
        if not value:
            return None
        if "," in value:  # Flannel ignores a previous subnet given as a list
            return None
        try:
            parsed = kind(value)
        except ValueError:
            raise ConfigError(f"{target}: invalid {key}", repr(value)) from None
        return parsed.network if isinstance(parsed, IPv4Interface | IPv6Interface) else parsed

    mtu_raw = values.get("FLANNEL_MTU", "0")
    # ASCII digits only ("²".isdigit() is true) and a length int() accepts.
    if not (mtu_raw.isascii() and mtu_raw.isdigit() and len(mtu_raw) <= 6):
        raise ConfigError(f"{target}: invalid FLANNEL_MTU", repr(mtu_raw[:20]))
    return SubnetEnv(
        network=single("FLANNEL_NETWORK", IPv4Network),  # type: ignore[arg-type]
        subnet=single("FLANNEL_SUBNET", IPv4Interface),  # type: ignore[arg-type]
        mtu=int(mtu_raw),
        ipmasq=values.get("FLANNEL_IPMASQ") == "true",
        ipv6_network=single("FLANNEL_IPV6_NETWORK", IPv6Network),  # type: ignore[arg-type]
        ipv6_subnet=single("FLANNEL_IPV6_SUBNET", IPv6Interface),  # type: ignore[arg-type]
    )


def read_plugin_env(path: str | os.PathLike[str]) -> PluginEnv:
    """The CNI plugin's reading of the file.

    Raises OSError if it cannot be read, IncompleteSubnetEnv if one of
    PLUGIN_KEYS is missing or empty, ValueError for a malformed value.
    """
    values = read_subnet_env_values(path)
    missing = [" or ".join(keys) for keys in PLUGIN_KEYS if not any(values.get(k) for k in keys)]
    if missing:
        raise IncompleteSubnetEnv(missing)
    networks: list[IPv4Network | IPv6Network] = []
    subnets: list[IPv4Network | IPv6Network] = []
    for key in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"):
        for item in values.get(key, "").split(","):
            if not item.strip():
                continue
            net = ipaddress.ip_network(item.strip(), strict=False)
            if net not in networks:
                networks.append(net)
    for key, version in (("FLANNEL_SUBNET", 4), ("FLANNEL_IPV6_SUBNET", 6)):
        if values.get(key):
            subnet = ipaddress.ip_interface(values[key]).network
            if subnet.version != version:
                raise ValueError(f"{key} {values[key]} is not an IPv{version} subnet")
            subnets.append(subnet)
    return PluginEnv(
        networks, subnets, int(values["FLANNEL_MTU"]), values["FLANNEL_IPMASQ"] == "true"
    )


def previous_subnet(path: str | os.PathLike[str]) -> IPv4Network | None:
    """FLANNEL_SUBNET of an earlier run, for re-acquiring the same lease; None if unusable."""
    try:
        env = read_subnet_env(path)
    except ConfigError:
        return None
    return env.subnet if env else None


def previous_subnets(path: str | os.PathLike[str]) -> tuple[IPv4Network | None, IPv6Network | None]:
    """FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET of an earlier run, for re-acquiring the same
    subnets; None for a family the file lacks or does not say usably."""
    try:
        env = read_subnet_env(path)
    except ConfigError:
        return None, None
    return (env.subnet, env.ipv6_subnet) if env else (None, None)
