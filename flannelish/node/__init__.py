"""Node operations: health and metrics server, nftables firewall, doctor, ops wiring."""
