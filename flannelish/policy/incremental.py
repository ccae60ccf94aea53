"""Incremental compilation: an event recompiles only the policies it touches.

The agent feeds every change (a policy, an endpoint or a namespace put or
deleted) into an :class:`IncrementalCompiler`; ``compiled()`` then recompiles
the parts (flannelish.policy.compile.Part) of the policies the changes touch
and assembles the ruleset from the rest as they were.  A policy change costs
one policy against the endpoints; an endpoint change costs the policies that
select it (as a pod or a peer), never policies x endpoints.  The result equals
``compile_policies`` of the same world (the property test checks it).
"""

from __future__ import annotations

from .compile import Compiled, Part, _Ctx, assemble, compile_policy
from .evaluate import World
from .model import Endpoint, Namespace, Policy, peer_selects_pod


class IncrementalCompiler:
    def __init__(self, node: str, families: tuple[int, ...] = (4, 6)) -> None:
        self.node = node
        self.families = families
        self.policies: dict[str, Policy] = {}  # policy key -> policy
        self.endpoints: dict[str, Endpoint] = {}  # "<node>/<containerID>" -> endpoint
        self.namespaces: dict[str, Namespace] = {}
        self._parts: dict[str, Part] = {}
        self._dirty: set[str] = set()  # policy keys to recompile
        self._changed = True  # the assembled ruleset is out of date
        self._last: Compiled | None = None

    # -- the world -------------------------------------------------------------------
    def reset(self, world: World) -> None:
        """Start over from a full listing (start-up, a watch restart)."""
        self.policies = {p.key: p for p in world.policies}
        self.endpoints = {f"{e.node}/{e.container_id}": e for e in world.endpoints}
        self.namespaces = dict(world.namespaces)
        self._parts.clear()
        self._dirty = set(self.policies)
        self._changed = True

    def world(self) -> World:
        return World(
            list(self.policies.values()), list(self.endpoints.values()), dict(self.namespaces)
        )

    def put_policy(self, policy: Policy) -> None:
        if self.policies.get(policy.key) == policy:
            return
        self.policies[policy.key] = policy
        self._dirty.add(policy.key)
        self._changed = True

    def delete_policy(self, key: str) -> None:
        if self.policies.pop(key, None) is not None:
            self._parts.pop(key, None)
            self._dirty.discard(key)
            self._changed = True

    def put_endpoint(self, ep: Endpoint) -> None:
        key = f"{ep.node}/{ep.container_id}"
        old = self.endpoints.get(key)
        if old == ep:
            return
        self.endpoints[key] = ep
        self._touch(old, ep)

    def delete_endpoint(self, key: str) -> None:
        old = self.endpoints.pop(key, None)
        if old is not None:
            self._touch(old, None)

    def put_namespace(self, ns: Namespace) -> None:
        if self.namespaces.get(ns.name) == ns:
            return
        self.namespaces[ns.name] = ns
        self._touch_namespace()

    def delete_namespace(self, name: str) -> None:
        if self.namespaces.pop(name, None) is not None:
            self._touch_namespace()

    # -- what a change touches ----------------------------------------------------------
    def _touch(self, old: Endpoint | None, new: Endpoint | None) -> None:
        for key, policy in self.policies.items():
            if key not in self._dirty and any(
                e is not None and self._depends(policy, e) for e in (old, new)
            ):
                self._dirty.add(key)
        self._changed = True

    def _depends(self, policy: Policy, ep: Endpoint) -> bool:
        """Could this endpoint be in one of the policy's sets?"""
        if (
            ep.node == self.node
            and ep.namespace == policy.namespace
            and policy.pod_selector.matches(ep.label_dict)
        ):
            return True
        for i, rules in enumerate((policy.ingress, policy.egress)):
            for rule in rules:
                if i == 1 and ep.ports and any(isinstance(p.port, str) for p in rule.ports):
                    return True  # egress to a named port: every endpoint holding ports
                if any(
                    peer_selects_pod(pe, policy.namespace, ep, self.namespaces) for pe in rule.peers
                ):
                    return True
        return False

    def _touch_namespace(self) -> None:
        # only namespaceSelector peers read namespace labels
        for key, policy in self.policies.items():
            if any(
                pe.namespace_selector is not None
                for rule in (*policy.ingress, *policy.egress)
                for pe in rule.peers
            ):
                self._dirty.add(key)
        self._changed = True

    # -- the ruleset -------------------------------------------------------------------
    def compiled(self) -> Compiled:
        """The current ruleset; only dirty policies are compiled again."""
        if not self._changed and self._last is not None:
            return self._last
        if self._dirty:
            endpoints = list(self.endpoints.values())
            ctx = _Ctx(endpoints, self.namespaces)
            local = [e for e in endpoints if e.node == self.node]
            for key in self._dirty:
                if key in self.policies:
                    self._parts[key] = compile_policy(ctx, self.policies[key], local, self.families)
            self._dirty.clear()
        self._last = assemble([self._parts[k] for k in sorted(self._parts)], self.families)
        self._changed = False
        return self._last
