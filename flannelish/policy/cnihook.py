"""Endpoint registration on the CNI fast path: the CniServer's ``after`` hook.

After a successful ADD the pod is registered (etcd, bound to the node's lease,
and this node's sets) before the reply goes back to the runtime; if that
fails the ADD is undone with a DEL and the runtime gets code 11 (try again
later).  DEL and GC remove endpoints; their failures are logged, never fatal
(a DEL must succeed; a stale endpoint is removed by the next GC).

Identity: ``K8S_POD_NAMESPACE`` / ``K8S_POD_NAME`` in CNI_ARGS (defaults
``default`` / the container ID); labels from the netconf's
``args.cni.labels`` (``[{"key": "app", "value": "web"}]``); named ports from
``args.cni.namedPorts`` (``[{"name": "http", "protocol": "TCP", "port": 80}]``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import ip_interface
from typing import Any

from flannelish.cni.handler import Response
from flannelish.cni.protocol import CniError, error_document, parse_cni_args
from flannelish.errors import CniCode

from .agent import PolicyAgent
from .model import Endpoint, NamedPort

log = logging.getLogger("flannelish.policy")


def endpoint_from_add(
    env: dict[str, str], doc: dict[str, Any], result: dict[str, Any], node: str
) -> Endpoint:
    cid = env.get("CNI_CONTAINERID", "")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    cni_args = (doc.get("args") or {}).get("cni") or {}
    labels = {}
    for item in cni_args.get("labels") or []:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            labels[item["key"]] = str(item.get("value", ""))
    ports = tuple(
        NamedPort(str(p["name"]), str(p.get("protocol", "TCP")).upper(), int(p["port"]))
        for p in cni_args.get("namedPorts") or []
        if isinstance(p, dict) and "name" in p and "port" in p
    )
    ips = tuple(
        str(ip_interface(i["address"]).ip) for i in result.get("ips") or [] if "address" in i
    )
    return Endpoint(
        container_id=cid,
        node=node,
        ips=ips,
        namespace=args.get("K8S_POD_NAMESPACE") or "default",
        name=args.get("K8S_POD_NAME") or cid,
        labels=tuple(sorted(labels.items())),
        ports=ports,
    )


def make_hook(agent: PolicyAgent) -> Callable[..., Response]:
    def after(
        env: dict[str, str],
        stdin: bytes,
        response: Response,
        rerun: Callable[[dict[str, str]], Response],
    ) -> Response:
        if response.exit_code != 0:
            return response
        command = env.get("CNI_COMMAND")
        try:
            doc = json.loads(stdin)
        except ValueError:
            return response
        if command == "ADD":
            try:
                ep = endpoint_from_add(env, doc, json.loads(response.stdout), agent.node)
                agent.register(ep)
                log.info("registered endpoint %s/%s %s", ep.namespace, ep.pod, ",".join(ep.ips))
            except Exception as exc:
                rerun({**env, "CNI_COMMAND": "DEL"})  # no pod without its policy
                err = CniError(
                    CniCode.TRY_AGAIN_LATER,
                    "network policy: cannot register the pod (its ADD was undone; retry)",
                    str(exc),
                )
                return Response(1, error_document(err, str(doc.get("cniVersion", "1.0.0"))))
        elif command == "DEL":
            try:
                agent.unregister(env.get("CNI_CONTAINERID", ""))
            except Exception as exc:
                log.warning("endpoint %s not removed: %s", env.get("CNI_CONTAINERID"), exc)
        elif command == "GC":
            valid = {
                str(a.get("containerID"))
                for a in doc.get("cni.dev/valid-attachments") or []
                if isinstance(a, dict)
            }
            try:
                agent.gc(valid)
            except Exception as exc:
                log.warning("endpoint GC failed: %s", exc)
        return response

    return after
