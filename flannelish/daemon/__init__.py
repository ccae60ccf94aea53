"""The node daemon (flanneld): lease, backend, reconciler, lifecycle."""
