"""The full pass's diff: desired objects (per peer) against the dumped ones (per kind).

A pure function of records, unit-tested without a kernel; :mod:`flannelish.daemon.reconciler`
applies what it returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from flannelish.kernel.resources import Resource


@dataclass
class Diff:
    remove: list[Any] = field(default_factory=list)  # already in removal order
    apply: list[list[Any]] = field(default_factory=list)  # per peer, in apply order
    # per peer, in apply order, before `remove`: groups that only replace objects in place
    early: list[list[Any]] = field(default_factory=list)
    # the index (in desired_groups) of each group in `apply` / `early`
    apply_peers: list[int] = field(default_factory=list)
    early_peers: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.remove and not any(self.apply) and not any(self.early)


def diff(
    resources: Sequence[Resource],
    desired_groups: Sequence[Sequence[Any]],
    actual: Mapping[str, Sequence[Any]],
    tick: Callable[[], object] | None = None,
) -> Diff:
    """Compare desired objects (grouped per peer) with the dumped ones (per resource kind).

    * an actual object whose key is not desired is removed;
    * an actual object that differs from the desired one under the same key
      is replaced in place, unless several actual objects share the key (an
      FDB MAC with two remotes): then all differing ones are removed first;
    * a desired object not present exactly is (re)applied; a peer's group
      goes to ``early`` (applied before the removals) when each of its
      objects replaces the single actual object under the same key.

    ``tick`` is called per object compared (the reconciler lets lease events
    through between slices of a long diff).
    """
    tick = tick or _nothing
    by_type = {r.record: r for r in resources}
    if not any(actual.values()):  # an empty kernel (a cold start): everything is applied
        nonempty = [n for n, group in enumerate(desired_groups) if group]
        return Diff(apply=[list(desired_groups[n]) for n in nonempty], apply_peers=nonempty)
    # Exact matches first, by value: when the kernel holds what is desired (every
    # periodic pass of a quiet cluster) no slot key is built at all, which keeps
    # the pass's temporary memory and its work per peer small.
    wanted: set[Any] = set()
    for group in desired_groups:
        tick()
        wanted.update(group)
    result = Diff()
    present: set[Any] = set()
    differing: dict[str, list[Any]] = {}  # per kind: actual objects nothing desires as they are
    for res in reversed(resources):
        for obj in actual.get(res.kind, ()):
            tick()
            if obj in wanted:
                present.add(obj)
            else:
                differing.setdefault(res.kind, []).append(obj)
    in_place: set[tuple[str, Hashable]] = set()  # keys whose one object is replaced
    if differing:
        desired: dict[str, dict[Hashable, Any]] = {}
        for group in desired_groups:
            tick()
            for obj in group:
                res = by_type[type(obj)]
                desired.setdefault(res.kind, {}).setdefault(res.key(obj), obj)
        for res in reversed(resources):
            if res.kind not in differing:
                continue
            counts = Counter(res.key(obj) for obj in actual[res.kind])
            wanted_here = desired.get(res.kind, {})
            for obj in differing[res.kind]:
                tick()
                k = res.key(obj)
                if k not in wanted_here or counts[k] > 1:
                    result.remove.append(obj)
                else:
                    in_place.add((res.kind, k))
    for n, group in enumerate(desired_groups):
        tick()
        todo = [obj for obj in group if obj not in present]
        if not todo:
            continue
        if result.remove and all(
            (by_type[type(obj)].kind, by_type[type(obj)].key(obj)) in in_place for obj in todo
        ):
            result.early.append(todo)
            result.early_peers.append(n)
        else:
            result.apply.append(todo)
            result.apply_peers.append(n)
    return result


def _nothing() -> None:
    pass


_FIELDS: dict[type, tuple[str, ...]] = {}


def describe(obj: Any, prefix: str = "") -> dict[str, str]:
    """Structured log fields of a kernel record (names optionally prefixed)."""
    names = _FIELDS.get(type(obj))
    if names is None:
        # kernel records (flannelish.kernel.netlink.record) or dataclasses (nft elements)
        names = getattr(obj, "_fields", None) or tuple(f.name for f in fields(obj))
        _FIELDS[type(obj)] = names
    return {prefix + name: str(getattr(obj, name)) for name in names}
