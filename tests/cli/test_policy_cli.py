"""`flannelish policy|endpoints|namespace` against a real etcd."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from flannelish.cli import cli
from flannelish.policy.model import Endpoint
from flannelish.policy.store import PolicyStore
from flannelish.subnet.etcdoptions import EtcdOptions
from flannelish.subnet.etcdstore import EtcdStore

pytestmark = pytest.mark.etcd

YAML = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-eg, namespace: y}
spec: {podSelector: {}, policyTypes: [Egress]}
"""


def test_policy_commands(etcd, tmp_path) -> None:
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd.client_url}
    runner = CliRunner()

    def call(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, list(args), env=env)
        assert result.exit_code == code, result.output
        return result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(YAML + "---\n" + YAML.split("---")[0].replace("port: 80", "port: 99999"))
    out = call("policy", "apply", "-f", str(bad), code=3)
    assert "document 2: spec.ingress[0].ports[0].port" in out
    assert "No resources" not in call("policy", "list") and "allow-b" not in call("policy", "list")

    good = tmp_path / "good.yaml"
    good.write_text(YAML)
    assert "networkpolicy x/allow-b configured" in call("policy", "apply", "-f", str(good))
    listing = call("policy", "list")
    assert "allow-b" in listing and "deny-eg" in listing
    doc = json.loads(call("policy", "get", "allow-b", "-n", "x", "-o", "json"))
    assert doc["spec"]["podSelector"] == {"matchLabels": {"pod": "a"}}
    assert "podSelector" in call("policy", "get", "allow-b", "--namespace", "x")

    store = EtcdStore(EtcdOptions(endpoints=[etcd.client_url]))
    try:
        ps = PolicyStore(store)
        for ns, pod, ip in (
            ("x", "a", "10.244.1.2"),
            ("x", "b", "10.244.1.3"),
            ("y", "b", "10.244.2.2"),
        ):
            ps.put_endpoint(Endpoint(f"c-{ns}{pod}", "n1", (ip,), ns, pod, (("pod", pod),)))
    finally:
        store.close()
    assert "10.244.1.3" in call("endpoints")
    assert "ALLOWED" in call(
        "policy", "explain", "--from", "x/b", "--to", "x/a", "--port", "80/tcp"
    )
    out = call("policy", "explain", "--from", "y/b", "--to", "x/a", "--port", "80/tcp", code=1)
    assert "DENIED" in out and "deny-eg" in out
    out = call("policy", "explain", "--from", "x/b", "--to", "x/a", "--port", "81/tcp", code=1)
    assert "isolated for ingress by x/allow-b" in out
    assert "ns" in call("namespace", "label", "y", "ns=y", "team=blue")
    assert '"team": "blue"' not in call("namespace", "label", "y", "team-")
    call("policy", "delete", "deny-eg", "-n", "y")
    call("policy", "delete", "deny-eg", "-n", "y", code=3)
    assert "ALLOWED" in call("policy", "explain", "--from", "y/b", "--to", "x/b")


@pytest.mark.unit
@pytest.mark.parametrize("content", [None, b"\xd0\xcf\x11\xe0 not utf-8"])
def test_apply_with_an_unreadable_file_is_a_config_error_not_a_traceback(tmp_path, content):
    path = tmp_path / "policy.yaml"
    if content is not None:
        path.write_bytes(content)
    result = CliRunner().invoke(
        cli, ["policy", "apply", "-f", str(path), "--etcd-endpoints", "http://127.0.0.1:1"]
    )
    assert result.exit_code == 3, result.output
    assert f"-f {path}: cannot read it" in result.output
    assert "Traceback" not in result.output
