# flannelish developer and newcomer entry points.
# `make lab` and `make test` are the two commands from README.md; both set up
# everything they need on a fresh Debian machine (run as root).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTHON ?= python3
DEB_PACKAGES := etcd-server etcd-client iproute2 nftables tcpdump iputils-ping iperf3 ethtool \
	containernetworking-plugins procps kmod ca-certificates openssl \
	podman runc busybox-static iptables \
	graphviz chromium chromium-driver fonts-dejavu-core systemd \
	wireguard-tools wireguard-go
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup deb-packages venv lab lab-down test test-fast fuzz lint typecheck bench bench-population clean test-compose

setup: deb-packages $(STAMP)

# Install only the Debian packages that are missing; `apt-get update` runs only then.
deb-packages:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The venv is rebuilt only when pyproject.toml changes (editable install: code edits need no reinstall).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lab: setup
	$(BIN)/flannelish lab up
	$(BIN)/flannelish lab check

lab-down: setup
	$(BIN)/flannelish lab down

test: setup lint
	GRPC_ENABLE_FORK_SUPPORT=false $(BIN)/pytest $(PYTEST_ARGS)

# Quick loop while developing: unit tests only.
test-fast: setup
	$(BIN)/pytest -m unit -q $(PYTEST_ARGS)

# The fuzz tests with the long hypothesis profile (`make test` runs them with a small one).
fuzz: setup
	FLANNELISH_FUZZ=1 $(BIN)/pytest -q -k fuzz

lint: setup typecheck
	$(BIN)/ruff check flannelish cni backends tests bench
	$(BIN)/ruff format --check flannelish cni backends tests bench

# mypy sees cni/ and backends/ under their installed names via a symlinked tree.
typecheck: setup
	@rm -rf .build/typecheck && mkdir -p .build/typecheck
	@cp -rs $(CURDIR)/flannelish .build/typecheck/flannelish
	@cp -rs $(CURDIR)/cni .build/typecheck/flannelish/cni
	@cp -rs $(CURDIR)/backends .build/typecheck/flannelish/backends
	cd .build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p flannelish

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Issue 16: N leases already in etcd, cold sync, then lease events one at a time;
# flanneld side by side when FLANNELD_BIN names its binary (about 1 + 2 min).
bench-population: setup
	$(PY) bench/convergence.py --population 1000
	$(PY) bench/convergence.py --population 5000

test-compose: setup
	bash tests/compose/run.sh

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache build *.egg-info
