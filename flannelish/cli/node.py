"""`flannelish status` and `flannelish doctor`: local node health."""

from flannelish.cli._pending import pending_command

COMMANDS = [
    pending_command("status", "node operations", 8, "Show this node's state."),
    pending_command("doctor", "node operations", 8, "Check this node for common problems."),
]
