"""The multi-host namespace lab: N nodes, M pods per node, one real etcd.

Layout of a lab called ``lab`` (state in ``/run/flannelish-lab/lab``)::

    fl-lab-ul        underlay namespace: bridge br0 198.18.0.254/24 + etcd :2379
    fl-lab-node1     eth0 198.18.0.1, `flannelish daemon`, cni0, flannel.1
    fl-lab-node1-pod1, fl-lab-node1-pod2 ...   attached by `flannelish-cni`

Modules, one job each:
    names     lab names, namespace names, defaults
    state     the JSON state file (what exists, which PIDs we started)
    procs     starting detached processes and stopping them only if still ours
    cni       invoking flannelish-cni exactly as a container runtime does
    build     `lab up` step by step
    teardown  `lab down`
    check     all-pairs ping and the no-NAT probe
    probe     a stdlib TCP/UDP server that reports the peer address it sees
    capture   a scapy capture process run inside the underlay namespace
    analysis  pure verdicts over captured packets (unit-testable)
    verify    traffic generation + capture + analysis for `flannelish verify`
    render    rich tables
    nodeapi   each daemon's /status, asked inside its node namespace
    diagram   `lab diagram`: the lab as a Graphviz picture
    hops      a capture process with one packet socket per hop (any namespace)
    journey   one packet followed through the per-hop captures (pure, scapy-decoded)
    report    `verify --report`: flows, hops, per-hop capture, the report's assembly
    reporthtml  the self-contained HTML page
"""
