# flannelish node/etcd image for the docker-compose lab (docker-compose.yml).
#
# The base image is a build argument so users get the normal Debian image
# while the test (tests/compose/run.sh) uses one built locally with mmdebstrap
# on machines that cannot reach an image registry:
#   docker build --build-arg BASE_IMAGE=localhost/debian:bookworm .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian's etcd (server + etcdctl), the kernel tools and Python; wireguard-go and
# wg for the wireguard backend where the host kernel has no WireGuard module.  A base image
# that already has them all (the test's mmdebstrap image) skips apt entirely.
ARG DEB_PACKAGES="etcd-server etcd-client iproute2 iputils-ping nftables tcpdump \
    python3 python3-venv procps mount ca-certificates wireguard-go wireguard-tools"
RUN missing=""; for p in ${DEB_PACKAGES}; do \
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies first (from pyproject.toml only), so code edits keep this layer cached.
RUN python3 -m venv /opt/flannelish
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/flannelish/bin/pip install -q -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (.dockerignore keeps the venv, .git and build output out).
COPY . /src
RUN /opt/flannelish/bin/pip install -q --no-deps /src \
    && install -m 0755 /src/compose/etcd.sh /usr/local/bin/flannelish-compose-etcd \
    && install -m 0755 /src/compose/node.sh /usr/local/bin/flannelish-compose-node \
    && rm -rf /src

ENV PATH=/opt/flannelish/bin:$PATH
CMD ["flannelish", "--help"]
