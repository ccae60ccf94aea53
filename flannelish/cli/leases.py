"""Operator commands on etcd: config put/get, leases, reserve, unreserve."""

from flannelish.cli._pending import pending_command

COMMANDS = [
    pending_command("config", "the lease manager", 4, "Read or write the network config."),
    pending_command("leases", "the lease manager", 4, "List subnet leases."),
    pending_command("reserve", "the lease manager", 4, "Reserve a subnet for a node."),
    pending_command("unreserve", "the lease manager", 4, "Remove a subnet reservation."),
]
