"""Wiring the policy component into the node daemon: agent, CNI hook, /status and /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .agent import PolicyAgent
from .cnihook import make_hook
from .store import PolicyStore

if TYPE_CHECKING:
    from flannelish.node.ops import NodeOps
    from flannelish.subnet.etcdstore import EtcdStore


def start_policy(
    store: EtcdStore,
    node: str,
    state_dir: Path,
    lease_id: int,
    ops: NodeOps | None,
    resync_s: float = 10.0,
) -> tuple[PolicyAgent, Callable[..., Any]]:
    """Start the agent (table applied, watch running); returns it and the CNI server hook."""
    from flannelish.kernel.nftlib import nft_runner

    # in-process libnftables: a transaction per change without starting nft each time
    agent = PolicyAgent(PolicyStore(store), nft_runner(), node, state_dir, resync_s)
    agent.start(lease_id)
    if ops is not None:
        ops.state.sections["policy"] = agent.status
        ops.state.metrics.registry.register(_Collector(agent))
    return agent, make_hook(agent)


class _Collector:
    """flannelish_policy_* metrics, read from the agent at scrape time."""

    def __init__(self, agent: PolicyAgent) -> None:
        self.agent = agent

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.agent.status()
        for name, help_text in (
            ("policies", "NetworkPolicies in etcd"),
            ("endpoints", "endpoints (pods) in etcd and on this node"),
            ("local_endpoints", "endpoints on this node"),
            ("rules", "rules in table inet flannelish-policy"),
            ("sets", "named sets in the policy table"),
            ("set_elements", "elements in all policy sets"),
            ("largest_set", "elements in the largest policy set"),
        ):
            yield GaugeMetricFamily(f"flannelish_policy_{name}", help_text, value=s[name])
        for name in ("converges", "full_rewrites", "repairs", "errors"):
            yield CounterMetricFamily(
                f"flannelish_policy_{name}", f"policy table {name}", value=s[name]
            )
        drops = CounterMetricFamily(
            "flannelish_policy_dropped_packets",
            "packets dropped because a policy isolates the pod",
            labels=["policy"],
        )
        for policy, packets in sorted(s["drops"].items()):
            drops.add_metric([policy], packets)
        yield drops
