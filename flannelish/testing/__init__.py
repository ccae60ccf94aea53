"""Real-parts helpers shared by the test suite, the lab and the benchmarks.

Everything here creates resources it can name and removes them again:
etcd servers started by PID in temp data dirs, network namespaces with a
per-run prefix, and an isolated underlay bridge living in its own namespace.
Nothing here ever touches the root namespace's routes, addresses or firewall.

The fakes the unit tests use live here too: ``registry.InMemoryRegistry``
(a flannelish.subnet.registry.Registry) and ``nft.FakeNft`` (a
flannelish.kernel.nft.NftRunner).
"""
