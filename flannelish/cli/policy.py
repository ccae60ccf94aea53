"""`flannelish policy apply|get|list|delete|explain`, `endpoints`, `namespace label`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from flannelish.cli.etcd_options import etcd_options
from flannelish.errors import ConfigError


@contextmanager
def _store(etcd: Any) -> Iterator[Any]:
    from flannelish.policy.store import PolicyStore
    from flannelish.subnet.etcdstore import EtcdStore

    store = EtcdStore(etcd)
    try:
        yield PolicyStore(store)
    finally:
        store.close()


@click.group("policy")
def policy_group() -> None:
    """NetworkPolicy (networking.k8s.io/v1) in etcd, enforced by daemons run with --policy."""


@policy_group.command("apply")
@click.option(
    "-f",
    "--filename",
    "path",
    required=True,
    help="YAML or JSON file, one or more documents; - for stdin.",
)
@click.option("--dry-run", is_flag=True, help="Validate only.")
@etcd_options
def apply_command(path: str, dry_run: bool, etcd: Any) -> None:
    """Validate every document first; write them only if all are valid."""
    from flannelish.policy.parse import parse_policies

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"-f {path}: cannot read it", detail) from None
    policies = parse_policies(text)
    if dry_run:
        for p in policies:
            click.echo(f"networkpolicy {p.key} valid (dry run)")
        return
    with _store(etcd) as ps:
        for p in policies:
            ps.put_policy(p)
            click.echo(f"networkpolicy {p.key} configured")


@policy_group.command("get")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True
)
@etcd_options
def get_command(name: str, namespace: str, output: str, etcd: Any) -> None:
    with _store(etcd) as ps:
        policy = ps.get_policy(namespace, name)
    if policy is None:
        raise ConfigError(f'networkpolicy "{name}" not found in namespace "{namespace}"')
    if output == "json":
        click.echo(json.dumps(policy.source, indent=2, sort_keys=True))
    else:
        import yaml

        click.echo(yaml.safe_dump(policy.source, sort_keys=False).rstrip())


@policy_group.command("list")
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option("--json", "as_json", is_flag=True)
@etcd_options
def list_command(namespace: str | None, as_json: bool, etcd: Any) -> None:
    with _store(etcd) as ps:
        world, _ = ps.snapshot()
    rows = [
        p for p in sorted(world.policies, key=lambda p: p.key) if namespace in (None, p.namespace)
    ]
    if as_json:
        click.echo(json.dumps([p.source for p in rows], indent=2))
        return
    click.echo(f"{'NAMESPACE':<16} {'NAME':<32} {'POD-SELECTOR':<32} TYPES")
    for p in rows:
        sel = json.dumps(p.pod_selector.to_dict(), separators=(",", ":"))
        click.echo(f"{p.namespace:<16} {p.name:<32} {sel:<32} {','.join(p.policy_types)}")


@policy_group.command("delete")
@click.argument("name")
@click.option("-n", "--namespace", default="default", show_default=True)
@etcd_options
def delete_command(name: str, namespace: str, etcd: Any) -> None:
    with _store(etcd) as ps:
        if not ps.delete_policy(namespace, name):
            raise ConfigError(f'networkpolicy "{name}" not found in namespace "{namespace}"')
    click.echo(f"networkpolicy {namespace}/{name} deleted")


def _pod(world: Any, ref: str) -> Any:
    ns, _, pod = ref.rpartition("/")
    ep = world.find(ns or "default", pod)
    if ep is None:
        raise click.BadParameter(
            f"no endpoint {ns or 'default'}/{pod} (see `flannelish endpoints`)"
        )
    return ep


@policy_group.command("explain")
@click.option("--from", "src", required=True, help="NS/POD")
@click.option("--to", "dst", required=True, help="NS/POD")
@click.option("--port", default="80/tcp", show_default=True, help="PORT/PROTO (tcp, udp, sctp)")
@click.option("--json", "as_json", is_flag=True)
@etcd_options
def explain_command(src: str, dst: str, port: str, as_json: bool, etcd: Any) -> None:
    """Allowed or denied (exit 0 / 1), and which policy and rule decided it."""
    from flannelish.policy.evaluate import explain

    number, _, proto = port.partition("/")
    if not number.isdigit() or proto.upper() not in ("TCP", "UDP", "SCTP", ""):
        raise click.BadParameter(f"--port {port}: expected PORT/tcp|udp|sctp")
    with _store(etcd) as ps:
        world, _ = ps.snapshot()
    a, b = _pod(world, src), _pod(world, dst)
    verdicts = explain(world, a, b, (proto or "tcp").upper(), int(number))
    if not verdicts:
        raise click.ClickException(f"{src} and {dst} share no address family")
    v = verdicts[0]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "allowed": v.allowed,
                    "egress": v.egress.__dict__,
                    "ingress": v.ingress.__dict__,
                },
                indent=2,
            )
        )
    else:
        click.echo(f"{src} -> {dst} {port}: {'ALLOWED' if v.allowed else 'DENIED'}")
        click.echo(f"  egress:  {'allow' if v.egress.allowed else 'deny '} {v.egress.reason}")
        click.echo(f"  ingress: {'allow' if v.ingress.allowed else 'deny '} {v.ingress.reason}")
    if not v.allowed:
        sys.exit(1)


@click.command("endpoints")
@click.option("-n", "--namespace", default=None)
@click.option("--json", "as_json", is_flag=True)
@etcd_options
def endpoints_command(namespace: str | None, as_json: bool, etcd: Any) -> None:
    """Pods registered by the CNI plugin: node, IPs, namespace, labels."""
    with _store(etcd) as ps:
        world, _ = ps.snapshot()
    eps = sorted(
        (e for e in world.endpoints if namespace in (None, e.namespace)),
        key=lambda e: (e.namespace, e.pod),
    )
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in eps], indent=2))
        return
    click.echo(f"{'NAMESPACE':<12} {'POD':<20} {'NODE':<16} {'IPS':<28} LABELS")
    for e in eps:
        labels = ",".join(f"{k}={v}" for k, v in e.labels)
        click.echo(f"{e.namespace:<12} {e.pod:<20} {e.node:<16} {','.join(e.ips):<28} {labels}")


@click.group("namespace")
def namespace_group() -> None:
    """Namespace labels for namespaceSelector (kubernetes.io/metadata.name is implied)."""


@namespace_group.command("label")
@click.argument("namespace")
@click.argument("labels", nargs=-1, required=True)
@etcd_options
def label_command(namespace: str, labels: tuple[str, ...], etcd: Any) -> None:
    """KEY=VALUE sets a label, KEY- removes it."""
    from flannelish.policy.model import Namespace
    from flannelish.policy.parse import parse_selector

    with _store(etcd) as ps:
        current = dict(ps.get_namespace(namespace).labels)
        for item in labels:
            if item.endswith("-") and "=" not in item:
                current.pop(item[:-1], None)
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise click.BadParameter(f"{item}: expected KEY=VALUE or KEY-")
            parse_selector({"matchLabels": {key: value}}, f"label {key}")  # validates
            current[key] = value
        ps.put_namespace(Namespace(namespace, tuple(sorted(current.items()))))
    click.echo(f"namespace {namespace} labelled: {json.dumps(current, sort_keys=True)}")


COMMANDS = [policy_group, endpoints_command, namespace_group]
