"""Flannel's side of the wire, for tests: its key pattern and dual-stack configs.

The pattern is the one Flannel's subnet code matches keys with, anchored at
the end (docs/flannel-compat.md §1): a key we write must match it, or a
Flannel node sharing our etcd would skip our lease.
"""

import re

FLANNEL_KEY = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")

# Network configs in Flannel's JSON: dual-stack and IPv6-only over the lab's ULA.
DUAL = (
    '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd44::/48",'
    '"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}'
)
V6ONLY = (
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd44::/48",'
    '"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}'
)
