"""`flannelish lab ...` and `flannelish verify`: the multi-host namespace lab."""

from flannelish.cli._pending import pending_command

COMMANDS = [
    pending_command(
        "lab", "the node daemon (#5), the CNI plugin (#6) and the lab", 7, "Multi-host lab."
    ),
    pending_command("verify", "the lab", 7, "Prove the overlay with packet captures."),
]
