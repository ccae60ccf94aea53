#!/usr/bin/env bash
# The docker-compose lab test (`make test-compose`).
#
# Builds the images of docker-compose.yml, brings the compose lab up (etcd + 3
# nodes, each node running `flannelish daemon` and pods attached by
# `flannelish-cni`), proves cross-node pod ping and VXLAN on the compose
# network from inside the node containers, and tears everything down.
#
# FLANNELISH_COMPOSE_IP_FAMILY=dual (`make test-compose-dual`) runs the dual-stack
# variant instead: docker-compose.yml plus compose/dual-stack.yml (underlay also
# on fd18::/64, pods also in fd44::/48) and checks every pod pair, the VXLAN
# encapsulation (each family over its own node addresses), TCP with the client's
# pod address seen by the server (no NAT) and the verifier's verdicts in both
# IPv4 and IPv6.  The default (ipv4) is the IPv4-only lab.
#
# Docker here is a private dockerd started and stopped by this script:
#  * own --data-root (kept between runs: it holds only the cached base image),
#    own --exec-root, --pidfile, unix socket and config file; DOCKER_HOST points to it;
#  * --bridge=none (no docker0), --iptables=false, --ip-forward=false,
#    --ip-masq=false: dockerd adds no firewall rule and changes no sysctl of the
#    root namespace; its only footprint there is the compose network's bridge
#    (flannelish-ul0, 10.97.100.0/24 by default, plus fd18::/64 in the dual-stack
#    variant, for which dockerd needs no flag: IPv6 is enabled per network), removed
#    by `down`.
#    Builds therefore use the host network (FLANNELISH_BUILD_NETWORK=host).
#  * the base image localhost/debian:bookworm is built with mmdebstrap (no image
#    registry is needed) and cached.
# A trap tears everything down on failure too; the end checks that no container,
# network, volume, image (other than the base image), build cache, link,
# firewall rule, mount or process is left, and fails otherwise.
#
# Environment: FLANNELISH_COMPOSE_CACHE (default /var/lib/flannelish-compose),
# FLANNELISH_COMPOSE_IP_FAMILY (ipv4, the default, or dual), FLANNELISH_COMPOSE_BACKEND
# (vxlan, the default, or wireguard; IPv4 only),
# FLANNELISH_COMPOSE_KEEP=1 (leave the lab running for debugging; teardown is
# then yours: `bash tests/compose/run.sh --down`).
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/compose/lib.sh
source "$REPO/tests/compose/lib.sh"

main() {
    case "${1:-}" in
        --down) flc_down_only; return ;;
        "") ;;
        *) echo "usage: $0 [--down]" >&2; return 2 ;;
    esac
    flc_begin
    trap 'flc_on_exit $?' EXIT
    trap 'exit 130' INT TERM

    flc_step "install Docker packages (if missing)"
    flc_install_packages
    flc_step "start private dockerd"
    flc_baseline
    flc_start_dockerd
    flc_preclean
    flc_step "base image $FLC_BASE_IMAGE"
    flc_base_image
    flc_step "snapshot the source tree"
    flc_snapshot_source
    flc_step "docker-compose build"
    flc_compose build --build-arg "BASE_IMAGE=$FLC_BASE_IMAGE" >"$FLC_RUN/build.log" 2>&1 \
        || { tail -40 "$FLC_RUN/build.log" >&2; flc_fail "image build failed"; }
    flc_step "docker-compose up -d ($FLC_IP_FAMILY)"
    if ! flc_compose up -d --no-build; then
        [ "$FLC_IP_FAMILY" != dual ] \
            || flc_log "dual-stack: the underlay network is created with enable_ipv6 and a fd18::/64 subnet; an error above about IPv6 means Docker's IPv6 networks do not work on this host"
        flc_fail "docker-compose up failed"
    fi
    flc_lookup_containers
    flc_wait_healthy 120
    flc_step "verify: pods, cross-node ping, $FLC_BACKEND on the compose network (${FLC_FAMILIES[*]/#/IPv})"
    flc_verify
    if [ "${FLANNELISH_COMPOSE_KEEP:-0}" = 1 ]; then
        flc_keep
    fi
    flc_step "teardown"
    flc_teardown
    flc_check_clean
    trap - EXIT
    flc_report
}

main "$@"
