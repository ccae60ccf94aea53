"""The kernel layer: rtnetlink encoder, typed kernel interface, change monitor, resources."""
