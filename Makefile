# One Makefile for people, CI (.ci/run) and pre-commit.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: soak build run test test-py test-rust lint fmt system-deps wheel bench bench-long loadtest clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'maturin>=1.7,<2'

# Builds the Rust extension (release) and installs the package with its dev extras, editable;
# again only when the Rust sources, Cargo's files or pyproject.toml changed since (or the
# extension is missing): `make run` inside the test suite (tests/integration/test_newcomer.py)
# then leaves the extension the suite has loaded in place.
BUILT := $(VENV)/.klawd-built
BUILD_INPUTS = $(shell find rust_core -name '*.rs' -o -name Cargo.toml) Cargo.toml Cargo.lock pyproject.toml
build: $(PY)
	@if [ -f $(BUILT) ] && ls gateway/_core*.so >/dev/null 2>&1 \
	  && [ -z "$$(find $(BUILD_INPUTS) -newer $(BUILT) | head -1)" ]; then \
	  echo "the extension is up to date (make clean, or touch a Rust source, to build it again)"; \
	else $(BIN)/maturin develop --release -E dev -q && touch $(BUILT); fi

# Servers the test suite starts itself (redis-server, prometheus + promtool, tinyproxy) and the headless
# browser of the Mission Control test (chromium + chromedriver); installed from Debian when missing.
system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v promtool >/dev/null || { \
	  echo "installing prometheus (promtool) from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus >/dev/null; }
	@command -v tinyproxy >/dev/null || { \
	  echo "installing tinyproxy from Debian (the egress-proxy tests)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy >/dev/null; }
	@command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver from Debian (Mission Control browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver >/dev/null; }

run: build
	$(BIN)/klawd serve

test: build system-deps test-rust test-py

test-rust:
	cargo test --workspace --quiet

test-py:
	$(BIN)/pytest

lint: build
	$(BIN)/ruff check gateway tests loadtests
	$(BIN)/ruff format --check gateway tests loadtests
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest gateway._core --allowlist .stubtest-allowlist
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features python -- -D warnings

fmt: $(PY)
	$(BIN)/ruff format gateway tests loadtests
	$(BIN)/ruff check --fix gateway tests loadtests
	cargo fmt --all

# The release wheel into dist/ (the Dockerfile's build stage runs the same script).
wheel: $(PY)
	MATURIN=$(BIN)/maturin PYTHON=$(PY) deploy/build-wheel.sh

clean:
	rm -rf $(VENV) target dist gateway/_core*.so

# A bounded soak run (not part of `make test`): good traffic mixed with upstream faults.
soak: build
	$(BIN)/python loadtests/soak.py --seconds 120 --clients 8

# Locust scenarios against a gateway on the fake upstreams, headless and bounded in time.
LOAD_USERS ?= 40
LOAD_SECONDS ?= 30
loadtest: $(PY)
	$(BIN)/maturin develop --release -E dev,load -q
	$(BIN)/python loadtests/run_load.py --users $(LOAD_USERS) --seconds $(LOAD_SECONDS)

# Side-by-side speed (not part of the tests): upstream, nginx, the stack floor and the gateway,
# pinned to cores; nginx (+ echo module) and wrk from Debian when missing. Results are written
# into docs/benchmarks.md. BENCH_ARGS="--seconds 2 --reps 1" for a quick look. Each round starts
# the contenders afresh (decision 0012, 19zzzzr): 4 rounds of 3 s turns keep make bench near its
# ~27 min (a fifth round would cost ~4 min more).
BENCH_ARGS ?= --seconds 3 --reps 4 --profile
# Traces on vs off and the cache-hit path (loadtests/bench/trace_cache_bench.py).
TRACE_CACHE_BENCH_ARGS ?= --seconds 5 --reps 3
bench: $(PY)
	@command -v wrk >/dev/null && command -v nginx >/dev/null \
	  && test -f /usr/lib/nginx/modules/ngx_http_echo_module.so || { \
	  echo "installing nginx, its echo module and wrk from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends nginx libnginx-mod-http-echo wrk >/dev/null; }
	$(BIN)/maturin develop --release -E dev,load -q
	taskset -c 1 $(BIN)/python -m loadtests.bench.side_by_side $(BENCH_ARGS) --write-docs
	taskset -c 1 $(BIN)/python -m loadtests.bench.trace_cache_bench $(TRACE_CACHE_BENCH_ARGS) --write-docs

# The balancer's own cost per request: a model of three deployments beside a single-deployment
# one in the same run, on SQLite and Redis (issue 14; docs/benchmarks.md, "Deployments").
.PHONY: bench-balancer
bench-balancer: $(PY)
	$(BIN)/python loadtests/bench/balancer_bench.py 2>/dev/null

# 10,000 streams of one event a second for a minute through one gateway worker (about 2 min).
bench-long: $(PY)
	@command -v nginx >/dev/null && test -f /usr/lib/nginx/modules/ngx_http_echo_module.so || { \
	  echo "installing nginx and its echo module from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends nginx libnginx-mod-http-echo >/dev/null; }
	$(BIN)/maturin develop --release -E dev,load -q
	taskset -c 1 $(BIN)/python -m loadtests.bench.long_run --write-docs
