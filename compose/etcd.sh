#!/bin/bash
# etcd service of the compose lab: Debian's etcd on the underlay, then the
# network config written once with `flannelish config put` (an existing config
# is left alone, so a restart does not undo `flannelish config put` by hand).  The healthcheck passes once the config is in.
set -euo pipefail

ETCD_IP="${ETCD_IP:?set ETCD_IP to the underlay address of this container}"
ETCD_PREFIX="${FLANNELD_ETCD_PREFIX:-/coreos.com/network}"
# FLANNELISH_IP_FAMILY=dual (compose/dual-stack.yml) adds IPv6 pods from fd44::/48,
# a /64 per node, as `flannelish lab up --ip-family dual` configures its network.
case "${FLANNELISH_IP_FAMILY:-ipv4}" in
    ipv4) PODS='"Network": "10.244.0.0/16", "SubnetLen": 24' ;;
    dual) PODS='"Network": "10.244.0.0/16", "SubnetLen": 24, "EnableIPv6": true, "IPv6Network": "fd44::/48", "IPv6SubnetLen": 64' ;;
    *) echo "[etcd] FLANNELISH_IP_FAMILY must be ipv4 or dual, not ${FLANNELISH_IP_FAMILY}" >&2; exit 2 ;;
esac
# FLANNELISH_BACKEND picks the default config's backend: vxlan (default) or wireguard.
case "${FLANNELISH_BACKEND:-vxlan}" in
    vxlan) DEFAULT_CONFIG="{$PODS"', "Backend": {"Type": "vxlan", "VNI": 1}}' ;;
    wireguard) DEFAULT_CONFIG="{$PODS"', "Backend": {"Type": "wireguard"}}' ;;
    *) echo "[etcd] FLANNELISH_BACKEND must be vxlan or wireguard, not ${FLANNELISH_BACKEND}" >&2; exit 2 ;;
esac
NETWORK_CONFIG="${FLANNELISH_NETWORK_CONFIG:-$DEFAULT_CONFIG}"
ENDPOINT="http://${ETCD_IP}:2379"

log() { echo "[etcd] $*" >&2; }

rm -f /run/flannelish-etcd.ready

# The data dir is a volume: recreating this container keeps leases and revisions.
etcd --name etcd --data-dir /var/lib/flannelish-etcd/data \
    --listen-client-urls "http://0.0.0.0:2379" --advertise-client-urls "$ENDPOINT" \
    --listen-peer-urls "http://127.0.0.1:2380" \
    --initial-advertise-peer-urls "http://127.0.0.1:2380" \
    --initial-cluster "etcd=http://127.0.0.1:2380" &
etcd_pid=$!
trap 'kill -TERM "$etcd_pid" 2>/dev/null' TERM INT

for _ in $(seq 1 200); do
    ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" --dial-timeout=1s endpoint health >/dev/null 2>&1 && break
    kill -0 "$etcd_pid" 2>/dev/null || { log "etcd exited"; exit 1; }
    sleep 0.1
done

if [ -n "$(ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINT" get --print-value-only "$ETCD_PREFIX/config")" ]; then
    log "network config already in etcd, leaving it"
else
    log "writing network config: $NETWORK_CONFIG"
    printf '%s\n' "$NETWORK_CONFIG" \
        | flannelish config put - --etcd-endpoints "$ENDPOINT" --etcd-prefix "$ETCD_PREFIX"
fi
log "ready on $ENDPOINT"
touch /run/flannelish-etcd.ready

# Wait for etcd (a trapped signal interrupts `wait`; then wait for its exit).
wait "$etcd_pid" || true
wait "$etcd_pid" 2>/dev/null || true
