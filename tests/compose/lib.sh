# Functions of tests/compose/run.sh (sourced).  All names start with flc_.
# shellcheck shell=bash
# Single quotes around scripts that run inside the containers are on purpose:
# shellcheck disable=SC2016

FLC_CACHE="${FLANNELISH_COMPOSE_CACHE:-/var/lib/flannelish-compose}"
FLC_DATA_ROOT="$FLC_CACHE/docker"
FLC_BASE_IMAGE="localhost/debian:bookworm"
FLC_PROJECT="flannelish-compose-test"
FLC_NODES=(node1 node2 node3)
FLC_DEB_DOCKER=(docker.io docker-compose mmdebstrap)
# Everything the images need from Debian, preinstalled in the base image so the
# Dockerfile's apt step is skipped (it stays for users building FROM debian:bookworm-slim).
FLC_BASE_PACKAGES="etcd-server,etcd-client,iproute2,iputils-ping,nftables,tcpdump,python3,python3-venv,procps,mount,ca-certificates,wireguard-go,wireguard-tools"
FLC_MIRROR="${FLANNELISH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
FLC_UNDERLAY="${FLANNELISH_UNDERLAY:-10.97.100}"
FLC_BRIDGE="flannelish-ul0"
FLC_DOCKER=/usr/bin/docker
FLC_RUN=""
FLC_DOCKERD_PID=""
FLC_T0=""
FLC_STEP_T=""
FLC_TIMES=()
FLC_FAILED=0
FLC_FAIL_REASON=""
FLC_BACKEND=vxlan
# FLANNELISH_COMPOSE_IP_FAMILY=dual: the dual-stack variant (compose/dual-stack.yml).
FLC_IP_FAMILY=ipv4
FLC_FAMILIES=(4)
FLC_DUAL_FILE=compose/dual-stack.yml
# The IPv6 underlay /64's prefix as compose/dual-stack.yml reads it (PREFIX:11 is node1).
FLC_UNDERLAY6="${FLANNELISH_UNDERLAY6:-fd18:}"

flc_now() { date +%s.%N; }
flc_since() { awk -v a="$1" -v b="$(flc_now)" 'BEGIN { printf "%.1f", b - a }'; }
flc_log() { printf '[compose-test %6ss] %s\n' "$(flc_since "$FLC_T0")" "$*" >&2; }
flc_fail() { flc_log "FAIL: $*"; FLC_FAILED=1; FLC_FAIL_REASON="$*"; exit 1; }

flc_step() {
    if [ -n "$FLC_STEP_T" ]; then
        FLC_TIMES+=("$(flc_since "$FLC_STEP_T")s  $FLC_STEP_NAME")
    fi
    FLC_STEP_NAME="$1"
    FLC_STEP_T=$(flc_now)
    flc_log "== $1"
}

flc_begin() {
    [ "$(id -u)" = 0 ] || { echo "tests/compose/run.sh must run as root" >&2; exit 1; }
    # The test checks the default lab: 2 pods per node, VXLAN VNI 1 on port 8472, or
    # with FLANNELISH_COMPOSE_BACKEND=wireguard the wireguard backend on udp/51820;
    # with FLANNELISH_COMPOSE_IP_FAMILY=dual, VXLAN in IPv4 and IPv6.
    FLC_BACKEND="${FLANNELISH_COMPOSE_BACKEND:-vxlan}"
    case "$FLC_BACKEND" in vxlan|wireguard) ;; *) echo "FLANNELISH_COMPOSE_BACKEND: vxlan or wireguard" >&2; exit 2 ;; esac
    FLC_IP_FAMILY="${FLANNELISH_COMPOSE_IP_FAMILY:-ipv4}"
    case "$FLC_IP_FAMILY" in
        ipv4) FLC_FAMILIES=(4) ;;
        dual) FLC_FAMILIES=(4 6) ;;
        *) echo "FLANNELISH_COMPOSE_IP_FAMILY: ipv4 or dual" >&2; exit 2 ;;
    esac
    if [ "$FLC_IP_FAMILY" = dual ] && [ "$FLC_BACKEND" != vxlan ]; then
        echo "FLANNELISH_COMPOSE_IP_FAMILY=dual runs with the vxlan backend (the WireGuard checks are IPv4-only)" >&2
        exit 2
    fi
    FLC_T0=$(flc_now)
    mkdir -p "$FLC_CACHE"
    # One run at a time: the data root, the underlay range and the bridge name are shared.
    exec 9>"$FLC_CACHE/lock"
    if ! flock -n 9; then
        flc_log "another compose test holds $FLC_CACHE/lock; waiting (up to 15 min)"
        flock -w 900 9 || { echo "could not get $FLC_CACHE/lock" >&2; exit 1; }
    fi
    FLC_RUN=$(mktemp -d /tmp/flc.XXXXXX)
    export DOCKER_HOST="unix://$FLC_RUN/docker.sock"
    export COMPOSE_PROJECT_NAME="$FLC_PROJECT"
    export FLANNELISH_BUILD_NETWORK=host
    export BASE_IMAGE="$FLC_BASE_IMAGE"
    export COMPOSE_HTTP_TIMEOUT=300
    export FLANNELISH_PODS_PER_NODE=2
    export FLANNELISH_BACKEND="$FLC_BACKEND"
    unset FLANNELISH_NETWORK_CONFIG
    flc_log "state: $FLC_RUN (run), $FLC_CACHE (cache); DOCKER_HOST=$DOCKER_HOST"
}

flc_report() {
    FLC_TIMES+=("$(flc_since "$FLC_STEP_T")s  $FLC_STEP_NAME")
    flc_log "timings:"
    printf '    %s\n' "${FLC_TIMES[@]}" >&2
    flc_log "PASS: compose lab ($FLC_BACKEND, $FLC_IP_FAMILY) built, up, verified and torn down in $(flc_since "$FLC_T0")s"
}

# --- packages -----------------------------------------------------------------

flc_install_packages() {
    local missing=() p
    for p in "${FLC_DEB_DOCKER[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        flc_log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

# --- private dockerd ------------------------------------------------------------

# What the root namespace looks like before we start, to prove we left it so.
flc_baseline() {
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort >"$FLC_RUN/links.before"
    nft list ruleset >"$FLC_RUN/nft.before" 2>/dev/null || true
    flc_forwarding >"$FLC_RUN/forwarding.before"
}

# The root namespace's forwarding switches (dockerd runs with --ip-forward=false and
# must not turn on IPv6 forwarding for the dual-stack network either).
flc_forwarding() {
    sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding \
        2>/dev/null | tr '\n' ' '
}

flc_pid_is_our_dockerd() { # PID: a dockerd using our data root?
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] \
        && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "dockerd .*--data-root $FLC_DATA_ROOT "
}

flc_stop_pid() { # PID [seconds]: TERM, wait, then KILL
    local pid="$1" wait="${2:-30}"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 $((wait * 10))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    flc_log "pid $pid did not stop in ${wait}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

flc_start_dockerd() {
    # A dockerd of a crashed earlier run still holding our data root: stop it by its PID.
    local old
    old=$(cat "$FLC_CACHE/dockerd.pid" 2>/dev/null || true)
    if flc_pid_is_our_dockerd "$old"; then
        flc_log "stopping dockerd $old left by an earlier run"
        flc_stop_pid "$old" 30
    fi
    mkdir -p "$FLC_DATA_ROOT"
    echo '{}' >"$FLC_RUN/daemon.json"
    # setsid: dockerd must not get the terminal's ^C before our teardown talks to it.
    setsid dockerd \
        --config-file "$FLC_RUN/daemon.json" \
        --data-root "$FLC_DATA_ROOT" \
        --exec-root "$FLC_RUN/exec" \
        --pidfile "$FLC_RUN/dockerd.pid" \
        --host "$DOCKER_HOST" \
        --bridge none --iptables=false --ip-forward=false --ip-masq=false \
        --default-address-pool base=10.97.128.0/18,size=24 \
        --storage-driver overlay2 --log-level warn \
        >"$FLC_RUN/dockerd.log" 2>&1 </dev/null &
    FLC_DOCKERD_PID=$!
    echo "$FLC_DOCKERD_PID" >"$FLC_CACHE/dockerd.pid"
    for _ in $(seq 1 300); do
        if "$FLC_DOCKER" info >/dev/null 2>&1; then
            flc_log "dockerd pid $FLC_DOCKERD_PID ready"
            return 0
        fi
        kill -0 "$FLC_DOCKERD_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -20 "$FLC_RUN/dockerd.log" >&2
    flc_fail "dockerd did not come up (log: $FLC_RUN/dockerd.log)"
}

# Leftovers of a crashed earlier run inside our private data root.
flc_preclean() {
    local ids=()
    mapfile -t ids < <("$FLC_DOCKER" ps -aq)
    [ "${#ids[@]}" = 0 ] || { flc_log "removing leftover containers"; "$FLC_DOCKER" rm -f "${ids[@]}" >/dev/null; }
    "$FLC_DOCKER" network prune -f >/dev/null
    "$FLC_DOCKER" volume prune -f >/dev/null
    flc_prune_images
}

flc_prune_images() { # every image but the base image, and the build cache
    local img
    for img in $("$FLC_DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep -vx "$FLC_BASE_IMAGE" || true); do
        [ "$img" = "<none>:<none>" ] || "$FLC_DOCKER" rmi -f "$img" >/dev/null 2>&1 || true
    done
    "$FLC_DOCKER" image prune -f >/dev/null
    "$FLC_DOCKER" builder prune -af >/dev/null 2>&1 || true
}

# --- base image -------------------------------------------------------------------

flc_base_image() {
    # The key changes when the package list, the mirror or the host's extra CA
    # certificates change (the latter so pip inside the build trusts a TLS proxy).
    # The image itself is the cache (in our data root); the rootfs tar is temporary.
    local cas=() key tar="$FLC_RUN/rootfs.tar"
    mapfile -t cas < <(find /usr/local/share/ca-certificates -name '*.crt' -type f 2>/dev/null | sort)
    key=$( { echo "$FLC_BASE_PACKAGES $FLC_MIRROR v1"; cat "${cas[@]}" /dev/null; } | sha256sum | cut -c1-16)
    if [ "$(cat "$FLC_CACHE/base.key" 2>/dev/null)" = "$key" ] \
        && "$FLC_DOCKER" image inspect "$FLC_BASE_IMAGE" >/dev/null 2>&1; then
        flc_log "cached (key $key)"
        return 0
    fi
    local hooks=()
    if [ "${#cas[@]}" -gt 0 ]; then
        hooks+=(--customize-hook="copy-in ${cas[*]} /usr/local/share/ca-certificates/")
        hooks+=(--customize-hook='chroot "$1" update-ca-certificates')
    fi
    flc_log "mmdebstrap bookworm ($FLC_BASE_PACKAGES)"
    rm -f "$FLC_CACHE/base.key"
    mmdebstrap --quiet --variant=apt --include="$FLC_BASE_PACKAGES" "${hooks[@]}" bookworm "$tar" \
        "deb $FLC_MIRROR bookworm main" "deb $FLC_MIRROR bookworm-updates main" \
        "deb ${FLC_MIRROR%/debian}/debian-security bookworm-security main" \
        >"$FLC_RUN/mmdebstrap.log" 2>&1 \
        || { tail -20 "$FLC_RUN/mmdebstrap.log" >&2; flc_fail "mmdebstrap failed"; }
    flc_log "docker import ($(du -m "$tar" | cut -f1) MB)"
    "$FLC_DOCKER" rmi -f "$FLC_BASE_IMAGE" >/dev/null 2>&1 || true
    # pip in the build must use the system CA store (which holds the host's extra CAs).
    "$FLC_DOCKER" import \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["/bin/bash"]' \
        "$tar" "$FLC_BASE_IMAGE" >/dev/null
    rm -f "$tar"
    echo "$key" >"$FLC_CACHE/base.key"
}

# --- source snapshot and compose ------------------------------------------------------

# Build from a snapshot of the working tree (tracked + untracked, not ignored
# files), so every service's image comes from the same files even while the
# tree is being edited, and the build context is small.
flc_snapshot_source() {
    local src="$FLC_RUN/src"
    mkdir -p "$src"
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
            | tar --null -T - -cf -) | tar -C "$src" -xf -
    else # not a git checkout: everything but the usual build and cache dirs
        tar -C "$REPO" --exclude-vcs --exclude=./.venv --exclude=./.build --exclude=./build \
            --exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' -cf - . \
            | tar -C "$src" -xf -
    fi
    flc_log "$(find "$src" -type f | wc -l) files in $src"
}

flc_compose() {
    local extra=()
    [ "$FLC_IP_FAMILY" != dual ] || extra+=(-f "$FLC_RUN/src/$FLC_DUAL_FILE")
    [ -z "${FLANNELISH_COMPOSE_OVERRIDE:-}" ] || extra+=(-f "$FLANNELISH_COMPOSE_OVERRIDE")
    docker-compose --project-directory "$FLC_RUN/src" -f "$FLC_RUN/src/docker-compose.yml" \
        "${extra[@]}" -p "$FLC_PROJECT" "$@"
}

declare -A FLC_CID=()
flc_container() { # SERVICE -> container id (from flc_lookup_containers, else asked)
    if [ -n "${FLC_CID[$1]:-}" ]; then
        echo "${FLC_CID[$1]}"
    else
        flc_compose ps -q "$1"
    fi
}

# Look every service's container id up once, in this shell: flc_container runs in
# $(...) subshells, where a cache it filled itself would be lost, and every
# `docker-compose ps` costs about a second.
flc_lookup_containers() {
    local svc
    for svc in etcd "${FLC_NODES[@]}"; do
        FLC_CID[$svc]=$(flc_compose ps -q "$svc")
    done
}

flc_exec() { # SERVICE CMD...: run in the service's container (no TTY)
    local svc="$1"
    shift
    "$FLC_DOCKER" exec "$(flc_container "$svc")" "$@"
}

flc_dump_logs() {
    flc_log "container logs:"
    flc_compose logs --no-color --tail 60 >&2 2>&1 || true
}

flc_wait_healthy() { # timeout seconds
    local deadline=$(($(date +%s) + $1)) svc cid status pending
    while :; do
        pending=""
        for svc in etcd "${FLC_NODES[@]}"; do
            cid=$(flc_container "$svc")
            status=$("$FLC_DOCKER" inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" 2>/dev/null || echo missing)
            case "$status" in
                running/healthy) ;;
                exited/* | dead/* | missing) flc_dump_logs; flc_fail "$svc is $status" ;;
                *) pending="$pending $svc($status)" ;;
            esac
        done
        [ -n "$pending" ] || break
        if [ "$(date +%s)" -ge "$deadline" ]; then
            flc_dump_logs
            flc_fail "not healthy after $1 s:$pending"
        fi
        sleep 0.5
    done
    flc_log "etcd and ${FLC_NODES[*]} healthy"
}

# --- verification ---------------------------------------------------------------------
#
# Every capture runs tcpdump with --immediate-mode: without it, packets reach
# tcpdump a ring block at a time (up to a second late), and a capture stopped
# soon after the traffic loses its last block.

flc_verify() {
    local node pod ip ip6 subnet subnet6 mtu n4 n6 i=0
    declare -A POD_IP POD_IP6 NODE_PODS NODE_IP NODE_IP6
    local pods=() node_args=()
    for node in "${FLC_NODES[@]}"; do
        i=$((i + 1))
        n4="$FLC_UNDERLAY.$((10 + i))"
        NODE_IP[$node]=$n4
        # First line: subnets and MTU from subnet.env; then "pod ip [ip6]" lines.
        { read -r subnet mtu subnet6; while read -r pod ip ip6; do
            [ -n "$pod" ] || continue
            POD_IP[$pod]=$ip
            POD_IP6[$pod]=$ip6
            NODE_PODS[$node]="${NODE_PODS[$node]:-} $pod"
            pods+=("$pod")
        done; } < <(flc_exec "$node" sh -c '. /run/flannel/subnet.env; echo $FLANNEL_SUBNET $FLANNEL_MTU ${FLANNEL_IPV6_SUBNET:-}; flannelish-compose-node pods')
        node_args+=(--node "$n4=$subnet")
        if [ "$FLC_IP_FAMILY" = dual ]; then
            n6=$(flc_ip6 "$FLC_UNDERLAY6:$((10 + i))")
            NODE_IP6[$node]=$n6
            [ -n "$subnet6" ] || flc_fail "$node: no FLANNEL_IPV6_SUBNET in its subnet.env (the network config is not dual-stack)"
            node_args+=(--node "$n6=$subnet6")
            for pod in ${NODE_PODS[$node]}; do
                [ -n "${POD_IP6[$pod]}" ] || flc_fail "$pod has no IPv6 address"
            done
            flc_log "$node ($n4, $n6): subnets $subnet $subnet6, mtu $mtu, pods:$(for p in ${NODE_PODS[$node]}; do printf ' %s %s %s' "$p" "${POD_IP[$p]}" "${POD_IP6[$p]}"; done)"
        else
            flc_log "$node ($n4): subnet $subnet, mtu $mtu, pods:$(for p in ${NODE_PODS[$node]}; do printf ' %s %s' "$p" "${POD_IP[$p]}"; done)"
        fi
    done
    [ "${#pods[@]}" -ge $((2 * ${#FLC_NODES[@]})) ] || flc_fail "expected 2 pods per node, got: ${pods[*]}"

    # Every pod pings every other pod (cross-node and same-node), in every family of
    # the run: one `docker exec` per node runs its pods' pings in parallel and prints
    # "ok|FAIL SRC DST-IP". -W 7: ping waits that long for late replies. When two
    # WireGuard peers start a handshake at the same instant (likely here: every node
    # pings at once), each drops the other's response and both retry after 5 s plus
    # jitter; the pings wait in the queue meanwhile (flannelish/lab/check.py says more).
    local targets="" results="" failed pairs
    for pod in "${pods[@]}"; do targets="$targets $(flc_pod_ips "$pod")"; done
    local pid_list=()
    for node in "${FLC_NODES[@]}"; do
        flc_exec "$node" bash -c '
            while read -r pod ip ip6; do
                for t in '"$targets"'; do
                    [ "$t" != "$ip" ] && [ "$t" != "$ip6" ] || continue
                    ( if ip netns exec "$pod" ping -n -q -c 2 -i 0.2 -W 7 "$t" >/dev/null 2>&1
                      then echo "ok $pod $t"; else echo "FAIL $pod $t"; fi ) &
                done
            done < <(flannelish-compose-node pods)
            wait' >"$FLC_RUN/ping.$node" 2>&1 &
        pid_list+=($!)
    done
    wait "${pid_list[@]}" || true
    results=$(cat "$FLC_RUN"/ping.node*)
    pairs=$(grep -cE '^(ok|FAIL) ' <<<"$results" || true)
    failed=$(grep -c '^FAIL ' <<<"$results" || true)
    grep '^FAIL ' <<<"$results" | sed 's/^/    /' >&2 || true
    local expected=$(( ${#FLC_FAMILIES[@]} * ${#pods[@]} * (${#pods[@]} - 1) ))
    [ "$pairs" = "$expected" ] || { echo "$results" >&2; flc_fail "expected $expected ping results, got $pairs"; }
    [ "$failed" = 0 ] || flc_fail "$failed of $pairs pod pairs cannot ping"
    if [ "$FLC_IP_FAMILY" = dual ]; then
        local ok4 ok6
        ok4=$(grep -cE '^ok [^ ]+ [0-9.]+$' <<<"$results" || true)
        ok6=$(grep -cE '^ok [^ ]+ [0-9a-f:]+$' <<<"$results" || true)
        if [ "$ok4" != "$((pairs / 2))" ] || [ "$ok6" != "$((pairs / 2))" ]; then
            flc_fail "expected $((pairs / 2)) pings per family, got IPv4 $ok4, IPv6 $ok6"
        fi
        flc_log "ping: all $pairs pod pairs ok (cross-node and same-node; IPv4 $ok4, IPv6 $ok6)"
    else
        flc_log "ping: all $pairs pod pairs ok (cross-node and same-node)"
    fi
    if [ "$FLC_BACKEND" = wireguard ]; then
        flc_verify_wireguard
        return
    fi

    # VXLAN on the compose network, seen from inside node2, per family: ICMP from a
    # node1 pod to a node2 pod must arrive as UDP 8472 between the nodes' underlay
    # addresses of the same family (IPv4 pods over IPv4, IPv6 pods over IPv6) with
    # the pod IPs unchanged inside (no NAT); nothing from the pod network may cross
    # the underlay unencapsulated.
    local src="node1-pod1" dst="node2-pod1" f src_ip dst_ip n1 n2 ipw echo_re cap outer inner
    local plain_filter="ip and net 10.244.0.0/16"
    [ "$FLC_IP_FAMILY" != dual ] || plain_filter="($plain_filter) or (ip6 and net fd44::/48)"
    flc_exec node2 sh -c 'rm -f /tmp/plain.txt /tmp/plain.err
        timeout 60 tcpdump -i eth0 --immediate-mode -t -nn -l "'"$plain_filter"'" >/tmp/plain.txt 2>/tmp/plain.err &
        echo $! >/tmp/plain.pid
        for i in $(seq 1 50); do grep -q "listening on" /tmp/plain.err && break; sleep 0.1; done'
    for f in "${FLC_FAMILIES[@]}"; do
        if [ "$f" = 6 ]; then
            src_ip="${POD_IP6[$src]}" dst_ip="${POD_IP6[$dst]}" n1="${NODE_IP6[node1]}" n2="${NODE_IP6[node2]}"
            ipw=IP6 echo_re="ICMP6, echo request"
        else
            src_ip="${POD_IP[$src]}" dst_ip="${POD_IP[$dst]}" n1="${NODE_IP[node1]}" n2="${NODE_IP[node2]}"
            ipw=IP echo_re="ICMP echo request"
        fi
        flc_exec node2 sh -c 'rm -f /tmp/vx.txt /tmp/vx.err
            timeout 20 tcpdump -i eth0 --immediate-mode -t -nn -l -T vxlan "udp port 8472 and src host '"$n1"'" >/tmp/vx.txt 2>/tmp/vx.err &
            echo $! >/tmp/vx.pid
            for i in $(seq 1 50); do grep -q "listening on" /tmp/vx.err && break; sleep 0.1; done'
        flc_exec node1 ip netns exec "$src" ping -n -q -c 4 -i 0.2 -W 2 "$dst_ip" >/dev/null \
            || flc_fail "ping $src -> $dst ($dst_ip) failed during the capture"
        cap=$(flc_exec node2 sh -c 'for i in $(seq 1 50); do [ "$(grep -c "'"$echo_re"'" /tmp/vx.txt)" -ge 4 ] && break; sleep 0.1; done
            kill -INT $(cat /tmp/vx.pid) 2>/dev/null; cat /tmp/vx.txt')
        printf '%s\n' "$cap" | sed 's/^/    node2 eth0: /' >&2
        outer=$(printf '%s\n' "$cap" | grep -cE "^$ipw $n1\.[0-9]+ > $n2\.8472: VXLAN, flags \[I\] \(0x08\), vni 1$" || true)
        inner=$(printf '%s\n' "$cap" | grep -cE "^$ipw $src_ip > $dst_ip: $echo_re" || true)
        [ "$outer" -ge 4 ] || flc_fail "expected 4 VXLAN packets ($ipw) $n1 -> $n2:8472 vni 1 on node2's eth0, saw $outer"
        [ "$inner" -ge 4 ] || flc_fail "expected the inner packets $src_ip -> $dst_ip (pod IPs, no NAT), saw $inner"
        flc_log "VXLAN over IPv$f: $outer packets $n1 -> $n2 udp/8472 vni 1 carrying $src_ip -> $dst_ip"
    done
    flc_exec node2 sh -c 'kill -INT $(cat /tmp/plain.pid) 2>/dev/null; sleep 0.5; true' || true
    local plain
    plain=$(flc_exec node2 cat /tmp/plain.txt)
    [ -z "$plain" ] || flc_fail "pod-network packets crossed the underlay unencapsulated: $plain"
    flc_log "VXLAN: no pod-network packet crossed the underlay unencapsulated"

    # TCP across the overlay, per family: node1-pod1 fetches 8 MB from an HTTP server
    # in node2-pod1; the checksums must match (catches offload/MTU trouble ping misses)
    # and the server must log node1-pod1's own address as the client (no NAT).
    local bind=()
    [ "$FLC_IP_FAMILY" != dual ] || bind=(--bind ::) # IPv6 and IPv4 (mapped) on one socket
    flc_exec node2 sh -c 'head -c 8388608 /dev/urandom >/tmp/blob
        cd /tmp && ip netns exec node2-pod1 python3 -m http.server '"${bind[*]}"' 8080 >/dev/null 2>/tmp/http.log &
        echo $! >/tmp/http.pid
        for i in $(seq 1 50); do ip netns exec node2-pod1 ss -ltn | grep -q ":8080 " && break; sleep 0.1; done'
    local want got url client seen
    want=$(flc_exec node2 sha256sum /tmp/blob | cut -d' ' -f1)
    for f in "${FLC_FAMILIES[@]}"; do
        if [ "$f" = 6 ]; then
            url="http://[${POD_IP6[node2-pod1]}]:8080/blob" dst_ip="${POD_IP6[node2-pod1]}" client="${POD_IP6[node1-pod1]}"
        else
            url="http://${POD_IP[node2-pod1]}:8080/blob" dst_ip="${POD_IP[node2-pod1]}" client="${POD_IP[node1-pod1]}"
        fi
        got=$(flc_exec node1 ip netns exec node1-pod1 python3 -c '
import hashlib, sys, time, urllib.request
t = time.monotonic()
data = urllib.request.urlopen(sys.argv[1], timeout=30).read()
dt = time.monotonic() - t
print(hashlib.sha256(data).hexdigest(), len(data), f"{len(data) * 8 / dt / 1e6:.0f}")
' "$url") || flc_fail "TCP transfer node1-pod1 -> node2-pod1 ($url) failed"
        [ "${got%% *}" = "$want" ] || flc_fail "TCP transfer over IPv$f corrupted: sha256 $got, want $want"
        # http.server logs "CLIENT - - [date] "GET /blob ..."; IPv4 clients of the
        # dual-stack socket appear as ::ffff:A.B.C.D.
        seen=$(flc_exec node2 sh -c 'grep "GET /blob" /tmp/http.log | tail -1 | cut -d" " -f1')
        seen="${seen#::ffff:}"
        [ "$seen" = "$client" ] || flc_fail "TCP over IPv$f: the server saw client $seen, not node1-pod1's $client (NAT)"
        flc_log "TCP over IPv$f: 8 MiB $dst_ip -> $client intact (sha256 match), $(echo "$got" | cut -d' ' -f3) Mbit/s; the server saw $seen (no NAT)"
    done
    flc_exec node2 sh -c 'kill $(cat /tmp/http.pid)' || true

    # The same, judged by the project's verifier (flannelish.lab.analysis, scapy):
    # a capture on node2's eth0 while node1's and node3's pods ping node2's pods
    # (normal and full-MTU packets with DF set) and node2's pods ping each other,
    # in every family; each family is judged on its own (its VXLAN over its own
    # node addresses, its own overlay MTU).
    local a b cross="" same="" all_ips="" x y
    for pod in "${pods[@]}"; do
        for x in $(flc_pod_ips "$pod"); do all_ips="$all_ips,$x"; done
    done
    for a in ${NODE_PODS[node1]} ${NODE_PODS[node3]}; do
        for b in ${NODE_PODS[node2]}; do
            cross="$cross,${POD_IP[$a]}>${POD_IP[$b]},${POD_IP[$b]}>${POD_IP[$a]}"
            [ "$FLC_IP_FAMILY" != dual ] || cross="$cross,${POD_IP6[$a]}>${POD_IP6[$b]},${POD_IP6[$b]}>${POD_IP6[$a]}"
        done
    done
    for a in ${NODE_PODS[node2]}; do
        for b in ${NODE_PODS[node2]}; do
            [ "$a" != "$b" ] || continue
            same="$same,${POD_IP[$a]}>${POD_IP[$b]}"
            [ "$FLC_IP_FAMILY" != dual ] || same="$same,${POD_IP6[$a]}>${POD_IP6[$b]}"
        done
    done
    flc_exec node2 sh -c 'rm -f /tmp/ul.pcap /tmp/ul.err
        tcpdump -i eth0 --immediate-mode -s 256 -U -w /tmp/ul.pcap "not tcp port 2379" 2>/tmp/ul.err &
        echo $! >/tmp/ul.pid
        for i in $(seq 1 50); do grep -q "listening on" /tmp/ul.err && break; sleep 0.1; done'
    local node2_ips=""
    pid_list=()
    for b in ${NODE_PODS[node2]}; do node2_ips="$node2_ips $(flc_pod_ips "$b")"; done
    for node in node1 node2 node3; do
        flc_exec "$node" bash -c '
            mtu=$(. /run/flannel/subnet.env; echo $FLANNEL_MTU)
            while read -r pod ip ip6; do
                for t in '"$node2_ips"'; do
                    [ "$t" != "$ip" ] && [ "$t" != "$ip6" ] || continue
                    case "$t" in *:*) size=$((mtu - 48)) ;; *) size=$((mtu - 28)) ;; esac
                    ip netns exec "$pod" ping -n -q -c 1 -W 2 "$t" >/dev/null || echo "FAIL $pod -> $t"
                    ip netns exec "$pod" ping -n -q -c 1 -W 2 -M do -s "$size" "$t" >/dev/null \
                        || echo "FAIL $pod -> $t ($size bytes, DF)"
                done
            done < <(flannelish-compose-node pods)' >"$FLC_RUN/traffic.$node" 2>&1 &
        pid_list+=($!)
    done
    wait "${pid_list[@]}" || true
    flc_exec node2 sh -c 'sleep 0.5; pid=$(cat /tmp/ul.pid); kill -INT $pid
        for i in $(seq 1 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done' || true
    if grep -h FAIL "$FLC_RUN"/traffic.node* >&2; then
        flc_fail "pings during the capture failed"
    fi
    # The overlay MTU per family: the pods' MTU (subnet.env), or in a dual-stack run
    # each family's VXLAN device (flannel-v6.1 carries 20 bytes more of outer header).
    local mtus=(--mtu "$mtu")
    if [ "$FLC_IP_FAMILY" = dual ]; then
        x=$(flc_exec node2 cat /sys/class/net/flannel.1/mtu) || flc_fail "node2 has no flannel.1"
        y=$(flc_exec node2 cat /sys/class/net/flannel-v6.1/mtu) || flc_fail "node2 has no flannel-v6.1"
        mtus=(--mtu "$x" --mtu6 "$y")
    fi
    local verdicts
    if verdicts=$("$FLC_DOCKER" exec -i "$(flc_container node2)" python - --pcap /tmp/ul.pcap \
        "${node_args[@]}" --pods "${all_ips#,}" --cross "${cross#,}" --same "${same#,}" \
        "${mtus[@]}" <"$REPO/tests/compose/vxlan_verdicts.py" 2>&1); then
        printf '%s\n' "$verdicts" | sed 's/^/    /' >&2
        flc_log "verifier (scapy): every verdict passed"
    else
        printf '%s\n' "$verdicts" | sed 's/^/    /' >&2
        flc_fail "the verifier found a failed verdict on node2's eth0"
    fi
}

# A pod's addresses in every family of the run (POD_IP, POD_IP6 of flc_verify).
flc_pod_ips() {
    echo "${POD_IP[$1]}" "${POD_IP6[$1]:-}"
}

# An IPv6 address as tcpdump and ip print it (fd18:0::11 -> fd18::11).
flc_ip6() {
    python3 -c 'import ipaddress, sys; print(ipaddress.IPv6Address(sys.argv[1]))' "$1" \
        || flc_fail "not an IPv6 address: $1 (FLANNELISH_UNDERLAY6=$FLC_UNDERLAY6)"
}

# The wireguard variant (FLANNELISH_COMPOSE_BACKEND=wireguard): every node has
# flannel-wg with a handshake with both peers, and a capture on node2's eth0 while
# node1's pods ping node2's pods (with a marker pattern) holds only UDP 51820 <-> 51820
# between node addresses, with the marker nowhere readable.
flc_verify_wireguard() {
    local node show impl
    for node in "${FLC_NODES[@]}"; do
        show=$(flc_exec "$node" wg show flannel-wg dump) || flc_fail "$node: no flannel-wg"
        [ "$(printf '%s\n' "$show" | tail -n +2 | awk '$5 > 0' | wc -l)" = 2 ] \
            || { printf '%s\n' "$show" >&2; flc_fail "$node: not 2 peers with a handshake"; }
        impl=$(flc_exec "$node" sh -c 'pgrep -x wireguard-go >/dev/null && echo wireguard-go || echo kernel')
        flc_log "$node: flannel-wg ($impl), 2 peers with a handshake"
    done
    local secret=5ec7e75ec7e75ec7e75ec7e75ec7e75e
    flc_exec node2 sh -c 'rm -f /tmp/wg.pcap /tmp/wg.err
        tcpdump -i eth0 --immediate-mode -U -w /tmp/wg.pcap "not tcp port 2379 and not arp" 2>/tmp/wg.err &
        echo $! >/tmp/wg.pid
        for i in $(seq 1 50); do grep -q "listening on" /tmp/wg.err && break; sleep 0.1; done'
    local b
    for b in ${NODE_PODS[node2]}; do
        flc_exec node1 ip netns exec node1-pod1 ping -n -q -c 3 -i 0.2 -W 2 -s 200 -p "$secret" \
            "${POD_IP[$b]}" >/dev/null || flc_fail "ping node1-pod1 -> $b during the capture"
    done
    flc_exec node2 sh -c 'sleep 0.5; pid=$(cat /tmp/wg.pid); kill -INT $pid
        for i in $(seq 1 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done' || true
    local verdict
    verdict=$(flc_exec node2 python -c '
import sys
from scapy.all import IP, UDP, rdpcap
nodes, secret = set(sys.argv[1].split(",")), bytes.fromhex(sys.argv[2])
wg = bad = 0
for p in rdpcap("/tmp/wg.pcap"):
    if secret in bytes(p):
        bad += 1; print("readable:", p.summary())
    if IP not in p or p[IP].src not in nodes or p[IP].dst not in nodes:
        continue
    if UDP in p and p[UDP].sport == p[UDP].dport == 51820:
        wg += 1
    else:
        bad += 1; print("not WireGuard:", p.summary())
print(f"{wg} WireGuard packets between nodes, {bad} bad")
sys.exit(1 if bad or wg < 12 else 0)
' "$FLC_UNDERLAY.11,$FLC_UNDERLAY.12,$FLC_UNDERLAY.13" "$secret" 2>&1) \
        || { printf '%s\n' "$verdict" >&2; flc_fail "the underlay carried more than WireGuard"; }
    flc_log "WireGuard on node2's eth0: $verdict; pod payload never readable"
}

# --- teardown -----------------------------------------------------------------------

flc_teardown() {
    if [ -n "$FLC_DOCKERD_PID" ] && kill -0 "$FLC_DOCKERD_PID" 2>/dev/null; then
        if [ -d "$FLC_RUN/src" ]; then
            flc_compose down -v --rmi local --remove-orphans --timeout 10 >"$FLC_RUN/down.log" 2>&1 \
                || { cat "$FLC_RUN/down.log" >&2; flc_log "compose down failed"; }
        fi
        local ids=()
        mapfile -t ids < <("$FLC_DOCKER" ps -aq 2>/dev/null || true)
        [ "${#ids[@]}" = 0 ] || "$FLC_DOCKER" rm -f "${ids[@]}" >/dev/null 2>&1 || true
        "$FLC_DOCKER" network prune -f >/dev/null 2>&1 || true
        "$FLC_DOCKER" volume prune -f >/dev/null 2>&1 || true
        flc_prune_images
        flc_docker_inventory >"$FLC_RUN/inventory.after"
        flc_log "stopping dockerd $FLC_DOCKERD_PID"
        flc_stop_pid "$FLC_DOCKERD_PID" 30
    fi
    FLC_DOCKERD_PID=""
    rm -f "$FLC_CACHE/dockerd.pid"
    # Links dockerd may leave behind (there is no docker0 with --bridge none, but check).
    local link
    for link in docker0 "$FLC_BRIDGE"; do
        if ip link show "$link" >/dev/null 2>&1 && ! grep -qx "$link" "$FLC_RUN/links.before" 2>/dev/null; then
            flc_log "removing leftover link $link"
            ip link del "$link" || true
        fi
    done
    flc_remove_docker_firewall
    # Mounts under our run dir or data root (overlay layers, netns of containers).
    local m
    awk -v r="$FLC_RUN" -v d="$FLC_DATA_ROOT" 'index($2, r) == 1 || index($2, d "/") == 1 {print $2}' \
        /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# Docker's chains, should a dockerd ever have made them (ours runs with --iptables=false).
flc_remove_docker_firewall() {
    local fam table chain
    for fam in ip ip6; do
        for table in filter nat; do
            nft list table "$fam" "$table" >/dev/null 2>&1 || continue
            if ! grep -q "^table $fam $table " "$FLC_RUN/nft.before" 2>/dev/null; then
                if nft list table "$fam" "$table" | grep -q 'chain DOCKER'; then
                    flc_log "removing table $fam $table created by dockerd"
                    nft delete table "$fam" "$table" || true
                fi
                continue
            fi
            # The table existed before: remove only Docker's chains and the jumps to them.
            local handle
            for handle in $(nft -a list table "$fam" "$table" | awk '/jump DOCKER|goto DOCKER/ {print $NF}'); do
                for chain in $(nft list table "$fam" "$table" | awk '/^\tchain / {print $2}'); do
                    nft delete rule "$fam" "$table" "$chain" handle "$handle" 2>/dev/null && break
                done
            done
            for chain in $(nft list table "$fam" "$table" | awk '/^\tchain DOCKER/ {print $2}'); do
                nft flush chain "$fam" "$table" "$chain" || true
            done
            for chain in $(nft list table "$fam" "$table" | awk '/^\tchain DOCKER/ {print $2}'); do
                nft delete chain "$fam" "$table" "$chain" || true
            done
        done
    done
}

flc_docker_inventory() {
    echo "containers: $("$FLC_DOCKER" ps -aq | wc -l)"
    echo "networks: $("$FLC_DOCKER" network ls --format '{{.Name}}' | grep -vxE 'host|none|bridge' | tr '\n' ' ')"
    echo "volumes: $("$FLC_DOCKER" volume ls -q | tr '\n' ' ')"
    echo "images: $("$FLC_DOCKER" images -a --format '{{.Repository}}:{{.Tag}}' | tr '\n' ' ')"
    echo "build-cache: $("$FLC_DOCKER" system df --format '{{.Type}} {{.TotalCount}}' | awk '$1 == "Build" {print $NF}')"
}

flc_check_clean() {
    local problems=()
    if [ -f "$FLC_RUN/inventory.after" ]; then
        grep -q '^containers: 0$' "$FLC_RUN/inventory.after" || problems+=("containers left")
        grep -q '^networks: $' "$FLC_RUN/inventory.after" || problems+=("networks left: $(grep ^networks "$FLC_RUN/inventory.after")")
        grep -q '^volumes: $' "$FLC_RUN/inventory.after" || problems+=("volumes left")
        grep -qxE "images: ($FLC_BASE_IMAGE )?" "$FLC_RUN/inventory.after" \
            || problems+=("images other than the base image: $(grep ^images "$FLC_RUN/inventory.after")")
        grep -qE '^build-cache: 0?$' "$FLC_RUN/inventory.after" || problems+=("build cache left")
    else
        problems+=("no docker inventory was taken before dockerd stopped")
    fi
    if pgrep -f -- "--data-root $FLC_DATA_ROOT" >/dev/null || pgrep -f -- "$FLC_RUN/" >/dev/null; then
        problems+=("processes left: $(pgrep -af -- "$FLC_RUN/|--data-root $FLC_DATA_ROOT" | tr '\n' ';')")
    fi
    local new_links
    new_links=$(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort \
        | comm -13 "$FLC_RUN/links.before" - | grep -E '^(docker0|br-|veth|flannelish-ul)' || true)
    [ -z "$new_links" ] || problems+=("links left: $new_links")
    if nft list ruleset 2>/dev/null | grep -qi docker; then
        problems+=("Docker firewall chains left")
    fi
    if ! diff -q "$FLC_RUN/nft.before" <(nft list ruleset 2>/dev/null) >/dev/null; then
        flc_log "note: the root namespace's nft ruleset differs from the start (not Docker's: checked above)"
    fi
    [ "$(flc_forwarding)" = "$(cat "$FLC_RUN/forwarding.before")" ] \
        || problems+=("forwarding sysctls changed: $(cat "$FLC_RUN/forwarding.before") -> $(flc_forwarding)")
    if awk -v r="$FLC_RUN" -v d="$FLC_DATA_ROOT" 'index($2, r) == 1 || index($2, d "/") == 1' /proc/self/mounts | grep -q .; then
        problems+=("mounts left under $FLC_RUN or $FLC_DATA_ROOT")
    fi
    if [ "${#problems[@]}" -gt 0 ]; then
        printf '  - %s\n' "${problems[@]}" >&2
        flc_fail "teardown left things behind"
    fi
    flc_log "docker before stopping: $(tr '\n' ';' <"$FLC_RUN/inventory.after" 2>/dev/null)"
    flc_log "clean: no container, network, volume, image but $FLC_BASE_IMAGE, build cache, link, firewall chain, mount or process left"
    rm -rf "$FLC_RUN"
}

flc_on_exit() {
    local rc="$1"
    trap - EXIT INT TERM
    if [ "${FLANNELISH_COMPOSE_KEEP:-0}" = 1 ]; then
        flc_keep "$rc"
    fi
    [ "$rc" != 0 ] || rc=1
    flc_log "failed (status $rc); tearing down"
    flc_dump_logs_if_up  # after a failed check too: why a container died is in its log
    flc_teardown || true
    flc_check_clean || true
    # Last, so that a caller showing the tail of the output shows why.
    flc_log "failed (status $rc): ${FLC_FAIL_REASON:-see above}"
    exit "$rc"
}

# FLANNELISH_COMPOSE_KEEP=1: leave dockerd and the lab running for a look around.
flc_keep() {
    trap - EXIT INT TERM
    echo "$FLC_RUN" >"$FLC_CACHE/kept-run"
    echo "$FLC_IP_FAMILY" >"$FLC_RUN/ip-family"
    local files="-f $FLC_RUN/src/docker-compose.yml"
    [ "$FLC_IP_FAMILY" != dual ] || files="$files -f $FLC_RUN/src/$FLC_DUAL_FILE"
    flc_log "FLANNELISH_COMPOSE_KEEP=1: lab left running. Look around with:"
    echo "    export DOCKER_HOST=$DOCKER_HOST" >&2
    echo "    docker-compose -p $FLC_PROJECT $files ps" >&2
    echo "  remove it with: bash tests/compose/run.sh --down" >&2
    exit "${1:-0}"
}

flc_dump_logs_if_up() {
    if [ -n "$FLC_DOCKERD_PID" ] && [ -d "$FLC_RUN/src" ] && kill -0 "$FLC_DOCKERD_PID" 2>/dev/null; then
        flc_dump_logs
    fi
}

# Tear down a lab left by FLANNELISH_COMPOSE_KEEP=1.
flc_down_only() {
    FLC_T0=$(flc_now)
    FLC_RUN=$(cat "$FLC_CACHE/kept-run" 2>/dev/null || true)
    if [ -z "$FLC_RUN" ] || [ ! -d "$FLC_RUN" ]; then
        echo "no kept compose lab" >&2
        return 0
    fi
    export DOCKER_HOST="unix://$FLC_RUN/docker.sock"
    FLC_IP_FAMILY=$(cat "$FLC_RUN/ip-family" 2>/dev/null || echo ipv4)
    FLC_DOCKERD_PID=$(cat "$FLC_CACHE/dockerd.pid" 2>/dev/null || true)
    flc_pid_is_our_dockerd "$FLC_DOCKERD_PID" || FLC_DOCKERD_PID=""
    flc_teardown
    rm -f "$FLC_CACHE/kept-run"
    flc_check_clean
}
