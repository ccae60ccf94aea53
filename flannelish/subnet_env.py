"""subnet.env: the file the daemon hands to the CNI plugin (docs/flannel-compat.md §6).

Written atomically (temp file in the same directory, fsync, rename) with mode
0644 whatever the umask, so a reader never sees half a file.  The format is
Flannel's exactly: ``KEY=value`` lines, no quotes, no comments, in a fixed
order.  Reading is lenient like Flannel's dotenv parser (unknown keys are
kept, comma lists allowed) and only used to find our previous subnet.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from flannelish.errors import ConfigError, KernelError


@dataclass(frozen=True)
class SubnetEnv:
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


def write_subnet_env(path: str | os.PathLike[str], env: SubnetEnv) -> None:
    """Atomically replace `path` with `env`; parent directories are created 0755."""
    target = Path(path)
    data = env.render().encode()
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
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


def read_subnet_env(path: str | os.PathLike[str]) -> SubnetEnv | None:
    """The file's contents, or None if it does not exist.

    A malformed value raises ConfigError naming the key and the file.
    """
    target = Path(path)
    try:
        text = target.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read subnet file {target}", exc.strerror) from None
    values = parse_subnet_env_text(text)

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
    if not mtu_raw.isdigit():
        raise ConfigError(f"{target}: invalid FLANNEL_MTU", repr(mtu_raw))
    return SubnetEnv(
        network=single("FLANNEL_NETWORK", IPv4Network),  # type: ignore[arg-type]
        subnet=single("FLANNEL_SUBNET", IPv4Interface),  # type: ignore[arg-type]
        mtu=int(mtu_raw),
        ipmasq=values.get("FLANNEL_IPMASQ") == "true",
        ipv6_network=single("FLANNEL_IPV6_NETWORK", IPv6Network),  # type: ignore[arg-type]
        ipv6_subnet=single("FLANNEL_IPV6_SUBNET", IPv6Interface),  # type: ignore[arg-type]
    )


def previous_subnet(path: str | os.PathLike[str]) -> IPv4Network | None:
    """FLANNEL_SUBNET of an earlier run, for re-acquiring the same lease; None if unusable."""
    try:
        env = read_subnet_env(path)
    except ConfigError:
        return None
    return env.subnet if env else None
