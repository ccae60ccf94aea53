"""Subnet leases on etcd: keys, lease records, the registry and the lease manager."""
