"""The flannelish CNI plugin (imported as flannelish.cni): bridge + host-local IPAM.

Modules, in the order a call passes through them:

* ``main``     entry point of ``flannelish-cni``; VERSION, then the fast path
* ``client``   forwards env + stdin to the daemon's socket (C built-ins only)
* ``server``   ``CniServer``: the daemon side, one thread per request
* ``handler``  one request -> one response; shared by both paths
* ``protocol`` env/version validation and error objects (codes 1, 4, 6)
* ``netconf``  netconf + subnet.env -> validated NetConf (codes 2, 7, 11)
* ``bridge``   ADD/DEL/CHECK/GC/STATUS with rollback on failure
* ``ipam``     host-local compatible allocator and on-disk store (flock)
* ``delegate`` runs another IPAM plugin from CNI_PATH
* ``masq``     per-container masquerade with nftables
* ``result``   results shaped per cniVersion
* ``install``  launcher + conflist for ``flannelish install-cni``

The kernel work (namespaces, links, addresses, routes, sysctls) goes through
flannelish.kernel, the same interface and implementation the daemon uses.
Only the standard library is imported here and on the fast path: a container
runtime starts a fresh process for every call.
"""
