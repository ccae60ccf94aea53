#!/bin/bash
# Node service of the compose lab.  The container is the node: it runs
# `flannelish daemon` on its underlay address, then creates demo pods (network
# namespaces) and attaches each one the way a container runtime does: the
# `flannelish-cni` executable with CNI_* variables and the netconf on stdin.
#
#   flannelish-compose-node            run the node (the container's command)
#   flannelish-compose-node pods       print "pod ip [ip6]" lines for this node's pods
#                                      (ip6: its IPv6 address in a dual-stack network)
#   flannelish-compose-node ready      exit 0 once the node is up (healthcheck)
set -euo pipefail

STATE=/run/flannelish-compose
SUBNET_FILE=/run/flannel/subnet.env
NODE_NAME="${NODE_NAME:-$(hostname)}"
PODS="${PODS_PER_NODE:-2}"
CNI_BIN_DIR="$(dirname "$(command -v flannelish-cni)")"
# Node mode: the pod range, gateway and MTU come from the daemon's subnet.env.
NETCONF=$(printf '{"cniVersion": "1.0.0", "name": "flannelish", "type": "flannelish-cni", "subnetFile": "%s", "isDefaultGateway": true}' "$SUBNET_FILE")

log() { echo "[$NODE_NAME] $*" >&2; }

case "${1:-run}" in
    pods) exec cat "$STATE/pods.tsv" ;;
    ready) exec test -f "$STATE/ready" ;;
    run) ;;
    *) echo "usage: $0 [run|pods|ready]" >&2; exit 2 ;;
esac

NODE_IP="${NODE_IP:?set NODE_IP to the underlay address of this node}"
# NODE_IP6 (the dual-stack variant, compose/dual-stack.yml): this node's IPv6
# underlay address, the outer address of its IPv6 VXLAN (flannel-v6.1).
NODE_IP6="${NODE_IP6:-}"
if [ -n "$NODE_IP6" ]; then # as `ip` prints it (fd18:0:0:0::11 -> fd18::11)
    NODE_IP6=$(python3 -c 'import ipaddress, sys; print(ipaddress.IPv6Address(sys.argv[1]))' "$NODE_IP6") \
        || { log "NODE_IP6 is not an IPv6 address"; exit 1; }
fi
ETCD_ENDPOINTS="${FLANNELD_ETCD_ENDPOINTS:?set FLANNELD_ETCD_ENDPOINTS, e.g. http://10.97.100.2:2379}"
# The interface that holds NODE_IP (eth0 unless the container has several networks).
IFACE=$(ip -o -4 addr show | awk -v ip="$NODE_IP" 'index($4, ip "/") == 1 {print $2; exit}')
[ -n "$IFACE" ] || { log "no interface has $NODE_IP"; ip -br addr >&2; exit 1; }

# Docker mounts /proc/sys read-only, but the CNI plugin sets per-interface
# sysctls (accept_ra, forwarding) on the node's bridge and in pods.  Make only
# /proc/sys/net writable: its sysctls belong to the namespace that writes them
# (this node or its pods), while the host-wide rest of /proc/sys stays read-only.
if [ ! -w /proc/sys/net/ipv4/ip_forward ]; then
    mount --bind /proc/sys/net /proc/sys/net
    mount -o remount,bind,rw,nosuid,nodev,noexec /proc/sys/net
fi

# Pods of an earlier run of this container (a restart, or a crash that skipped
# the cleanup below) are released once the daemon is up, as a runtime would.
stale_pods=()
if [ -f "$STATE/pods.tsv" ]; then
    while read -r pod _; do [ -z "$pod" ] || stale_pods+=("$pod"); done <"$STATE/pods.tsv"
fi
rm -rf "$STATE" && mkdir -p "$STATE" /run/flannel
: >"$STATE/pods.tsv"

cni() { # cni COMMAND POD: run the plugin as a runtime does
    CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" CNI_IFNAME=eth0 \
        CNI_PATH="$CNI_BIN_DIR" flannelish-cni <<<"$NETCONF"
}

daemon_pid=""
stopping=0
running=0
# shellcheck disable=SC2317  # called by the trap
shutdown() {
    stopping=1
    log "stopping: releasing pods, then the daemon"
    while read -r pod _; do
        [ -n "$pod" ] || continue
        cni DEL "$pod" >/dev/null 2>&1 || log "CNI DEL $pod failed"
        ip netns del "$pod" 2>/dev/null || true
    done <"$STATE/pods.tsv"
    : >"$STATE/pods.tsv"
    rm -f "$STATE/ready"
    [ -z "$daemon_pid" ] || kill -TERM "$daemon_pid" 2>/dev/null || true
    if [ "$running" = 0 ]; then # still setting up: do not go on
        [ -z "$daemon_pid" ] || wait "$daemon_pid" 2>/dev/null || true
        exit 0
    fi
}
trap shutdown TERM INT

public6=()
if [ -n "$NODE_IP6" ]; then
    # The address may show up a moment after the container starts (seen with
    # Docker 20.10); the daemon needs it as the IPv6 VXLAN's source.
    waited=0
    until ip -o -6 addr show dev "$IFACE" | grep -q " $NODE_IP6/"; do
        [ "$waited" -lt 100 ] || { log "$IFACE has no $NODE_IP6 after 10 s (is the network's enable_ipv6 on?)"; ip -br addr >&2; exit 1; }
        sleep 0.1
        waited=$((waited + 1))
    done
    [ "$waited" = 0 ] || log "$NODE_IP6 on $IFACE after ${waited}00 ms"
    public6=(--public-ipv6 "$NODE_IP6")
fi

log "starting flannelish daemon: iface $IFACE ($NODE_IP${NODE_IP6:+, $NODE_IP6}), etcd $ETCD_ENDPOINTS"
# --ip-masq as kube-flannel runs it: the node masquerades only traffic leaving
# the pod network; pod-to-pod traffic keeps its pod source address.
touch "$STATE/daemon-started"
flannelish daemon --etcd-endpoints "$ETCD_ENDPOINTS" --iface "$IFACE" \
    --public-ip "$NODE_IP" "${public6[@]}" --subnet-file "$SUBNET_FILE" --ip-masq &
daemon_pid=$!

# subnet.env of an earlier run may still be there: wait for this daemon's.
for _ in $(seq 1 600); do
    [ -s "$SUBNET_FILE" ] && [ "$SUBNET_FILE" -nt "$STATE/daemon-started" ] && break
    kill -0 "$daemon_pid" 2>/dev/null || { log "daemon exited before writing $SUBNET_FILE"; exit 1; }
    sleep 0.1
done
[ "$SUBNET_FILE" -nt "$STATE/daemon-started" ] || { log "no $SUBNET_FILE after 60 s"; exit 1; }
log "subnet.env: $(tr '\n' ' ' <"$SUBNET_FILE")"

for pod in "${stale_pods[@]}"; do
    log "releasing $pod of an earlier run"
    ip netns del "$pod" 2>/dev/null || rm -f "/run/netns/$pod"
    cni DEL "$pod" >/dev/null || log "CNI DEL $pod failed"
done

for i in $(seq 1 "$PODS"); do
    pod="$NODE_NAME-pod$i"
    ip netns add "$pod"
    if ! result=$(cni ADD "$pod"); then
        log "CNI ADD for $pod failed: $result"
        exit 1
    fi
    printf '%s\n' "$result" >"$STATE/$pod.json"
    # "IPv4 [IPv6]": the pod's first address of each family the network has.
    ips=$(python3 -c 'import json, sys
ips = [i["address"].split("/")[0] for i in json.load(sys.stdin)["ips"]]
print(*[a for a in ips if ":" not in a][:1], *[a for a in ips if ":" in a][:1])' <<<"$result")
    printf '%s %s\n' "$pod" "$ips" >>"$STATE/pods.tsv"
    log "pod $pod: $ips"
done
touch "$STATE/ready"
log "ready: $(tr '\n' ' ' <"$STATE/pods.tsv")"

# Run until the daemon ends or we are told to stop (a trapped signal interrupts `wait`).
status=0
running=1
wait "$daemon_pid" || status=$?
if [ "$stopping" = 1 ]; then
    wait "$daemon_pid" 2>/dev/null || true
    exit 0
fi
log "daemon exited with status $status"
exit "$status"
