"""CNI and network policy: endpoints registered through the daemon, no ADD without it."""

from __future__ import annotations

from pathlib import Path

from flannelish.cni.handler import POLICY_MARKER
from flannelish.cni.server import CniServer

from flannelish.kernel.nft import NftCli
from flannelish.policy.agent import PolicyAgent
from flannelish.policy.cnihook import make_hook
from flannelish.policy.compile import FAMILY, TABLE
from flannelish.policy.store import PolicyStore
from flannelish.testing.policystore import MemoryStore

LABELS = {
    "args": {
        "cni": {
            "labels": [{"key": "app", "value": "web"}],
            "namedPorts": [{"name": "http", "protocol": "TCP", "port": 8080}],
        }
    }
}
K8S = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1"}


def test_inprocess_add_refused_while_policy_is_in_force(cni_inproc) -> None:
    cni = cni_inproc
    (Path(cni.socket).parent / POLICY_MARKER).write_text("{}")
    pod = cni.pod()
    err = cni.call("ADD", cni.conf(), netns=pod).error(11)
    assert "daemon is not reachable" in err["msg"]
    assert cni.reserved_ips() == []  # nothing was allocated
    cni.delete(pod)  # DEL still works without the daemon


def test_add_registers_endpoint_before_returning_and_del_removes_it(cni_inproc) -> None:
    cni = cni_inproc
    mem = MemoryStore()
    agent = PolicyAgent(
        PolicyStore(mem), NftCli(netns=cni.host), "node1", Path(cni.run_dir), netns=cni.host
    )  # type: ignore[arg-type]
    agent.start()
    server = CniServer(cni.socket, after=make_hook(agent))
    server.start()
    try:
        pod = cni.pod()
        result = cni.call("ADD", {**cni.conf(), **LABELS}, netns=pod, env=K8S).ok().json
        ip = result["ips"][0]["address"].split("/")[0]
        (ep,) = agent.view().endpoints
        assert (ep.namespace, ep.name, ep.labels, ep.ips) == (
            "shop",
            "web-1",
            (("app", "web"),),
            (ip,),
        )
        assert ep.ports[0].port == 8080
        assert any(k.endswith("/endpoints/node1/ctr1") for k in mem.data)
        # a policy selecting it: the pod's address is in the sets right away
        from flannelish.policy.parse import parse_policies

        doc = (
            '{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",'
            '"metadata":{"name":"d","namespace":"shop"},"spec":{"podSelector":{}}}'
        )
        PolicyStore(mem).put_policy(parse_policies(doc)[0])  # type: ignore[arg-type]
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not agent.view().policies:
            time.sleep(0.02)
        listing = NftCli(netns=cni.host).listing("set", FAMILY, TABLE, "iso_in_4") or []
        assert ip in str(listing)
        cni.call("DEL", {**cni.conf(), **LABELS}, netns=pod, env=K8S).ok()
        assert agent.view().endpoints == [] and not any("/endpoints/" in k for k in mem.data)
    finally:
        server.stop()
        agent.stop()


def test_add_undone_when_registration_fails(cni_inproc) -> None:
    cni = cni_inproc
    mem = MemoryStore()
    agent = PolicyAgent(
        PolicyStore(mem), NftCli(netns=cni.host), "node1", Path(cni.run_dir), netns=cni.host
    )  # type: ignore[arg-type]
    agent.start()

    def broken_put(*_a, **_k):
        raise OSError("etcd is down")

    agent.store.put_endpoint = broken_put  # type: ignore[method-assign]
    server = CniServer(cni.socket, after=make_hook(agent))
    server.start()
    try:
        pod = cni.pod()
        err = cni.call("ADD", cni.conf(), netns=pod, env=K8S).error(11)
        assert "ADD was undone" in err["msg"] and "etcd is down" in err.get("details", "")
        assert cni.reserved_ips() == []  # the DEL released the address
        assert "eth0" not in cni.links(pod)
    finally:
        server.stop()
        agent.stop()
