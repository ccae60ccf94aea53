"""The nodes' segmentation offloads: on for throughput, off only while `verify` captures.

A veth hands 64 KB GSO super-packets straight to its peer, so with the
offloads on a capture on the underlay bridge sees "frames" far larger than
any wire carries, and `verify` could not prove that inner packets fit the
overlay MTU or that nothing is fragmented.  A physical NIC segments before
the wire; the lab imitates that only for the capture: :func:`segmentation_off`
records each node eth0's current settings, turns segmentation off, and puts
back exactly the features that were on, even when the capture fails.
The rest of the time the lab runs with the offloads the kernel gives a veth
(TSO/GSO on), so `lab perf` measures what a node really does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

ETHTOOL = "/usr/sbin/ethtool"
IFACE = "eth0"
# `ethtool -K` name -> the line `ethtool -k` prints for it.
SEGMENTATION = {
    "tso": "tcp-segmentation-offload",
    "gso": "generic-segmentation-offload",
    "tx-udp_tnl-segmentation": "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation": "tx-udp_tnl-csum-segmentation",
    "tx-udp-segmentation": "tx-udp-segmentation",
}

Runner = Callable[..., Any]  # flannelish.testing.proc.run's signature


def parse_features(text: str) -> dict[str, tuple[bool, bool]]:
    """`ethtool -k` output -> feature -> (on, fixed)."""
    out: dict[str, tuple[bool, bool]] = {}
    for line in text.splitlines():
        if ":" not in line or line.startswith("Features for"):
            continue
        name, _, value = line.partition(":")
        words = value.split()
        if not words:
            continue
        out[name.strip()] = (words[0] == "on", "[fixed]" in value)
    return out


def changeable_on(features: dict[str, tuple[bool, bool]]) -> list[str]:
    """The `ethtool -K` names of our segmentation features that are on and not fixed."""
    return [
        short
        for short, long in SEGMENTATION.items()
        if features.get(long, (False, True))[0] and not features.get(long, (False, True))[1]
    ]


def _set(runner: Runner, netns: str, names: Sequence[str], state: str) -> None:
    if names:
        argv = [ETHTOOL, "-K", IFACE]
        for name in names:
            argv += [name, state]
        runner(argv, netns=netns)


@contextlib.contextmanager
def segmentation_off(
    netns_list: Iterable[str], runner: Runner | None = None
) -> Iterator[dict[str, list[str]]]:
    """Turn segmentation off on each node's eth0 for the duration; restore what was on.

    Yields {netns: [features turned off]}; restoring happens in reverse order
    and is attempted for every node even if one fails.
    """
    if runner is None:
        from flannelish.testing.proc import run

        runner = run
    do: Runner = runner
    changed: dict[str, list[str]] = {}
    try:
        for netns in netns_list:
            text = do([ETHTOOL, "-k", IFACE], netns=netns).stdout
            names = changeable_on(parse_features(text))
            changed[netns] = names  # recorded first: a failed -K is still restored
            _set(do, netns, names, "off")
        yield changed
    finally:
        errors = []
        for netns, names in reversed(list(changed.items())):
            try:
                _set(do, netns, names, "on")
            except Exception as exc:  # restore the others, then report
                errors.append(f"{netns}: {exc}")
        if errors:
            raise RuntimeError("could not restore the offloads: " + "; ".join(errors))
