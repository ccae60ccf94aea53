"""Kubernetes NetworkPolicy (networking.k8s.io/v1) for flannelish pods.

``model`` (the objects), ``parse`` (YAML/JSON documents, validated),
``evaluate`` (the reference verdict and ``explain``), ``compile`` (selectors
into named nft sets and O(policies) rules in ``table inet flannelish-policy``),
``nftmodel`` (an evaluator of the compiled form, for the property test),
``store`` (etcd under ``/flannelish/policy/``), ``agent`` (the daemon's
component), ``cnihook`` (endpoint registration on the CNI fast path).
"""
