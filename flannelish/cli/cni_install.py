"""`flannelish install-cni`: install the plugin launcher and conflist."""

from flannelish.cli._pending import pending_command

COMMANDS = [
    pending_command("install-cni", "the CNI plugin", 6, "Install the CNI plugin and conflist.")
]
