# Everything bootstraps itself: a fresh clone needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8080
CONFIG ?= config/gateway.yaml
SET ?=
# One stamp per set of extras: `make run` installs only what running needs; `make test` and
# `make bench` add theirs (the suite drives the benchmark harness, so it needs both).
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test venv clean system-deps

## Everything a developer needs (running, tests, benchmarks).
venv: $(TEST_STAMP) $(BENCH_STAMP)

# Debian packages the tests and benchmarks drive, installed when missing, as COMMAND:PACKAGE: wrk (the
# load generator), iptables (the transparent-mode tests), curl (a client of the peer matrix),
# PostgreSQL (the runtime's shared store; its server binaries live off PATH), nginx (the load balancer
# in front of two `serve` replicas), Chromium (the suite's HTML report, driven by Playwright), zsh and
# fish (`softprobe completion`'s scripts run in the real shells), Node and npm (the suite's JS/TS hooks).
SYSTEM_PACKAGES := wrk:wrk iptables:iptables curl:curl pg_ctl:postgresql nginx:nginx chromium:chromium zsh:zsh fish:fish \
	node:nodejs npm:npm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=$$(for pair in $(SYSTEM_PACKAGES); do c=$${pair%%:*}; p=$${pair#*:}; \
		PATH="$$PATH:/usr/sbin:/sbin:$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ':')" command -v $$c >/dev/null || echo $$p; done); \
	[ -z "$$missing" ] || DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing || \
		{ $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y $$missing; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

# The allocator settings every gateway starts with (softprobe_gateway.proxy.memory.ALLOCATOR_ENV; the image sets the same).
GATEWAY_ENV := MALLOC_ARENA_MAX=2

## Start the gateway as an explicit proxy on 127.0.0.1:$(PORT): curl -x http://127.0.0.1:$(PORT) http://...
## SET='softprobe_lookups=on softprobe_strict=on' adds mitmproxy options (`--set` each).
run: $(STAMP)
	@$(BIN)/python -c 'import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
		s.bind(("127.0.0.1", $(PORT)))' 2>/dev/null || { echo "make run: port $(PORT) on 127.0.0.1 is taken: stop what holds it, or choose another with make run PORT=8081" >&2; exit 1; }
	env $(GATEWAY_ENV) $(BIN)/mitmdump -s addon/softprobe_addon.py --listen-host 127.0.0.1 --listen-port $(PORT) \
		--set softprobe_config=$(CONFIG) $(foreach option,$(SET),--set $(option))

## Run the whole test suite (every tier: unit, addon, integration, system; what CI runs).
test: $(TEST_STAMP) $(BENCH_STAMP) system-deps hook-loader
	$(BIN)/python -m pytest -q

# TypeScript suite hooks on a Node without type stripping load through tsx, installed from the npm
# registry into ~/.cache/softprobe on first use: here, before the tests, which reach only loopback.
.PHONY: hook-loader
hook-loader: $(STAMP) system-deps
	$(BIN)/python -m softprobe_gateway.suite.node

## The inner loop: the unit and addon tiers, no process of their own beyond the export worker (about 20 s).
.PHONY: test-fast
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/addon

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info addon/*.egg-info

## Benchmarks (issue 6), loopback only: writes bench/results/latest.{md,json,png}, then prints
## the lookup client's CPU per lookup against h11 and httpx (bench/lookup_client.py) and the
## proxy's CPU per lookup, stage by stage (bench/lookup_cost.py), and per request, hook by hook
## (bench/hook_cost.py), then the runtime's store in process (bench/runtime.py) and over HTTP,
## serve replicas behind nginx on SQLite and PostgreSQL (bench/runtime_http.py).
## `make bench BENCH_ARGS=--quick` for a smoke run; `.venv/bin/python -m bench --help` for knobs.
.PHONY: bench
bench: $(BENCH_STAMP) system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.lookup_client $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python -m bench.lookup_cost $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python -m bench.hook_cost $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python -m bench.runtime $(filter --quick,$(BENCH_ARGS))
	$(BIN)/python -m bench.runtime_http $(filter --quick,$(BENCH_ARGS))

## The travel demo: front and airline services, the gateway recording them, a search/book/pay session, shown.
.PHONY: demo
demo: $(STAMP)
	$(BIN)/python examples/travel/run_demo.py
