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

.PHONY: setup deb-packages venv lab lab-down test test-fast fuzz lint typecheck bench bench-quick bench-report bench-population bench-fleet clean test-compose test-compose-wireguard test-compose-dual

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
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $(STAMP)

venv: $(STAMP)

lab: setup
	$(BIN)/flannelish lab up
	$(BIN)/flannelish lab check

lab-down: setup
	$(BIN)/flannelish lab down

test: setup lint
	$(BIN)/pytest $(PYTEST_ARGS)

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

# `make bench`: every benchmark, each writing bench/benchjson.py's JSON into
# $(BENCH_RESULTS), then bench/report.py renders $(BENCH_OUT)/summary.md and the
# PNG plots from whatever results exist (a bench that fails is reported and skipped).
# About 13-18 minutes on a 2-core machine; `make bench-quick` (~4 min) for development.
# FLANNELD_BIN=/path/to/flanneld adds flanneld's column where a bench supports it.
BENCH_OUT ?= bench/report
BENCH_RESULTS := $(BENCH_OUT)/results
BENCH_PEERS ?= 100 1000
BENCH_POPULATION ?= 1000 5000
# bench/fleet.py's simulated nodes in `make bench` (its 5000-node run: `make bench-fleet`).
BENCH_FLEET_NODES ?= 1000
BENCH_RUN = run() { echo "== $$*"; "$$@" || echo "!! FAILED ($$?): $$*"; }
# Installed code runs from bytecode; a stale cache (or PYTHONDONTWRITEBYTECODE)
# would make every daemon and CNI start in a bench compile the edited modules.
BENCH_COMPILE = $(PY) -m compileall -q flannelish backends cni

bench: setup
	@rm -rf $(BENCH_RESULTS) && mkdir -p $(BENCH_RESULTS)
	@$(BENCH_COMPILE)
	@$(BENCH_RUN); start=$$SECONDS; \
	run $(PY) bench/cni.py --json $(BENCH_RESULTS)/cni.json; \
	run $(PY) bench/leases.py --json $(BENCH_RESULTS)/leases.json; \
	run $(PY) bench/convergence.py --json $(BENCH_RESULTS)/convergence-100.json; \
	run $(PY) bench/convergence.py --dual-stack --json $(BENCH_RESULTS)/convergence-dual-100.json; \
	for p in $(BENCH_PEERS); do run $(PY) bench/scale.py --peers $$p --json $(BENCH_RESULTS)/scale-$$p.json; done; \
	for p in $(BENCH_POPULATION); do run $(PY) bench/convergence.py --population $$p --json $(BENCH_RESULTS)/population-$$p.json; done; \
	run $(PY) bench/datapath.py --json $(BENCH_RESULTS)/datapath.json; \
	run $(PY) bench/datapath.py --family 6 --json $(BENCH_RESULTS)/datapath-6.json; \
	run $(PY) bench/fleet.py --nodes $(BENCH_FLEET_NODES) --json $(BENCH_RESULTS)/fleet.json; \
	run $(PY) bench/hostile.py; \
	echo "benchmarks took $$((SECONDS - start)) s"
	$(PY) bench/report.py --results $(BENCH_RESULTS) --out $(BENCH_OUT)

bench-quick: setup
	@rm -rf $(BENCH_RESULTS) && mkdir -p $(BENCH_RESULTS)
	@$(BENCH_COMPILE)
	@$(BENCH_RUN); start=$$SECONDS; \
	run $(PY) bench/cni.py --quick --json $(BENCH_RESULTS)/cni.json; \
	run $(PY) bench/leases.py --nodes 20 --writes 10 --json $(BENCH_RESULTS)/leases.json; \
	run $(PY) bench/convergence.py --peers 20 --json $(BENCH_RESULTS)/convergence-20.json; \
	run $(PY) bench/convergence.py --dual-stack --peers 20 --json $(BENCH_RESULTS)/convergence-dual-20.json; \
	run $(PY) bench/scale.py --peers 100 --json $(BENCH_RESULTS)/scale-100.json; \
	run $(PY) bench/datapath.py --seconds 1 --rounds 1 --json $(BENCH_RESULTS)/datapath.json; \
	run $(PY) bench/datapath.py --family 6 --seconds 1 --rounds 1 --json $(BENCH_RESULTS)/datapath-6.json; \
	run $(PY) bench/fleet.py --quick --json $(BENCH_RESULTS)/fleet.json; \
	echo "benchmarks took $$((SECONDS - start)) s"
	$(PY) bench/report.py --results $(BENCH_RESULTS) --out $(BENCH_OUT)

# N leases already in etcd, cold sync, then lease events one at a time;
# flanneld side by side when FLANNELD_BIN names its binary (about 1 + 2 min).
# (`make bench` runs these too and puts them in the report.)
bench-population: setup
	$(PY) bench/convergence.py --population 1000
	$(PY) bench/convergence.py --population 5000

# The fleet at full size: 5000 simulated nodes (lease storm, renewals, cold sync,
# memory, idle CPU, release) and 1000 watchers; writes $(BENCH_RESULTS)/fleet.json for the
# report (replacing `make bench`'s smaller run).  About 10-20 min on a 2-core machine.
bench-fleet: setup
	@mkdir -p $(BENCH_RESULTS)
	$(PY) bench/fleet.py --nodes 5000 --watchers 1000 --json $(BENCH_RESULTS)/fleet.json
	$(PY) bench/report.py --results $(BENCH_RESULTS) --out $(BENCH_OUT)

# Render only (after editing bench/report.py): no measurement.
bench-report: setup
	$(PY) bench/report.py --results $(BENCH_RESULTS) --out $(BENCH_OUT)

test-compose: setup
	bash tests/compose/run.sh

# The same lab with the wireguard backend (wireguard-go in each node container).
test-compose-wireguard: setup
	FLANNELISH_COMPOSE_BACKEND=wireguard bash tests/compose/run.sh

# The dual-stack variant (docker-compose.yml + compose/dual-stack.yml): every check
# in IPv4 and IPv6.  Not part of `make test` or CI (another full compose run).
test-compose-dual: setup
	FLANNELISH_COMPOSE_IP_FAMILY=dual bash tests/compose/run.sh

clean:
	rm -rf $(VENV) .build .pytest_cache .mypy_cache .ruff_cache build *.egg-info
