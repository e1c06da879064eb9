# qdata developer commands. `make run` and `make test` do all set-up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
BUF := node_modules/.bin/buf

.PHONY: install tools promtool run test lint proto wheel schema bench migrate verify seed clean contract-baseline

$(INSTALLED): requirements.txt requirements-embedded.txt requirements-dev.txt server/pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e clients/python -e server
	touch $@

$(NODE_INSTALLED): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(INSTALLED)

## tools: the repository's own buf (node_modules/.bin/buf) for buf curl and lint, the Node packages
## the deploy tests use (package.json), and promtool
tools: $(NODE_INSTALLED) promtool

## promtool: Prometheus's rule checker from Debian's `prometheus` package, for tests/integration/
## test_deploy_rules.py (skipped, naming why, without it). A promtool on PATH is used as it is;
## otherwise the package is downloaded and only its files unpacked into .tools/prometheus (no
## Prometheus service installed or started, no root needed once the apt lists exist).
PROMTOOL_DIR := .tools/prometheus
promtool:
	@command -v promtool >/dev/null || [ -x $(PROMTOOL_DIR)/usr/bin/promtool ] || { \
	  tmp=$$(mktemp -d) && (cd $$tmp && { apt-get download prometheus 2>/dev/null \
	    || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get download prometheus; }; }) \
	  && mkdir -p $(PROMTOOL_DIR) && dpkg-deb -x $$tmp/prometheus_*.deb $(PROMTOOL_DIR); \
	  status=$$?; rm -rf $$tmp; exit $$status; }
	@{ command -v promtool || echo $(PROMTOOL_DIR)/usr/bin/promtool; } | xargs -I{} sh -c '{} --version | head -1'

## run: serve on 127.0.0.1:50051 (embedded PostgreSQL unless DATABASE_URL is set), Prometheus
## metrics on 127.0.0.1:9464 unless QDATA_METRICS_LISTEN_ADDRESS says otherwise
run: $(INSTALLED)
	QDATA_METRICS_LISTEN_ADDRESS=$${QDATA_METRICS_LISTEN_ADDRESS-127.0.0.1:9464} $(BIN)/python -m qdata_server serve

## test: the whole suite against real PostgreSQL (QDATA_TEST_DATABASE_URL or an embedded one)
test: $(INSTALLED)
	$(BIN)/python -m pytest

## lint: buf lint + buf format check on the contract, buf breaking (WIRE_JSON) against the last
## released contract (protos/breaking/baseline.binpb, see contract-baseline), ruff on the Python, then mypy: strict on
## server/ (qdata_server) and clients/python/qdata (generated qdata.v1 not reported, its .pyi used);
## tests/ and bench/ are not type-checked. Settings in pyproject.toml's [tool.mypy].
lint: $(INSTALLED) $(NODE_INSTALLED)
	cd protos && ../$(BUF) lint && ../$(BUF) format -d --exit-code
	cd protos && ../$(BUF) breaking --against breaking/baseline.binpb
	$(BIN)/ruff check server clients tests bench
	$(BIN)/ruff format --check server clients/python/qdata/client.py clients/python/qdata/_calls.py clients/python/generate.py tests bench
	$(BIN)/mypy

## proto: regenerate from protos/ the Python modules, their .pyi stubs (messages and typed gRPC
## stubs) and the client's typed RPC methods (clients/python/qdata/_rpcs.py); see generate.py
proto: $(INSTALLED)
	rm -f clients/python/qdata/v1/*_pb2*.py clients/python/qdata/v1/*_pb2*.pyi clients/python/qdata/_rpcs.py
	$(BIN)/python clients/python/generate.py

## contract-baseline: at release time, record the contract being released as the image that
## `make lint`'s buf breaking compares against (commit protos/breaking/baseline.binpb with the release)
contract-baseline: $(NODE_INSTALLED)
	cd protos && ../$(BUF) build --exclude-source-info -o breaking/baseline.binpb

## wheel: build the client (qdata-client, clients/python) as a wheel into dist/, for
## `pip install dist/qdata_client-<version>-py3-none-any.whl` in another repository
wheel: $(INSTALLED)
	rm -rf clients/python/build  # setuptools' in-tree build dir: stale files would ship
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist ./clients/python
	rm -rf clients/python/build
	@ls dist/qdata_client-*.whl

## schema: regenerate server/qdata_server/db/schema.sql (migrations + db/functions, dumped by the
## embedded PostgreSQL's pg_dump; the test suite fails if the committed file is stale)
schema: $(INSTALLED)
	$(BIN)/python -m qdata_server.db.schema

## bench: the performance table (bench/README.md): every row against its reference in the same run,
## CPU per call, results to bench/results/table-<time>.json, then the README's table from it.
## BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS=--quick` for a sanity run
bench: $(INSTALLED)
	$(BIN)/python -m bench --suite table $(BENCH_ARGS)
	$(BIN)/python -m bench.readme

migrate verify seed: $(INSTALLED)
	$(BIN)/python -m qdata_server $@

clean:
	rm -rf $(VENV) node_modules .tools .pytest_cache .ruff_cache .mypy_cache
