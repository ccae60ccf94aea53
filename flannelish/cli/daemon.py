"""`flannelish daemon`: the per-node agent (flanneld)."""

from flannelish.cli._pending import pending_command

COMMANDS = [pending_command("daemon", "the node daemon", 5, "Run the node daemon.")]
