# The front door: make run, make test, make lint, make typecheck, make bench.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NODE_DEPS := tests/js/node_modules/.package-lock.json
BENCH_NODE_DEPS := bench/node/node_modules/.package-lock.json

.PHONY: run test unit lint typecheck bench redis-server clean pin

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(STAMP)

# A redis-server binary for the embedded Redis of make run and for the tests.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else echo "redis-server is not installed: sudo apt-get install redis-server" >&2; exit 1; fi; }

$(NODE_DEPS): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --silent --no-audit --no-fund

# The benchmark's Node.js Socket.IO server and emitter (bench/node).
$(BENCH_NODE_DEPS): bench/node/package.json bench/node/package-lock.json
	cd bench/node && npm ci --silent --no-audit --no-fund

run: $(STAMP)
	@if [ -z "$$GATEWAY_REDIS_URL" ]; then $(MAKE) --no-print-directory redis-server; fi
	$(PY) -m gateway.devserver

test: $(STAMP) redis-server $(NODE_DEPS)
	$(PY) -m pytest

unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway harness tests bench gunicorn.conf.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy gateway

bench: $(STAMP) redis-server $(BENCH_NODE_DEPS)
	$(PY) -m bench

# Re-pin requirements.txt from pyproject's dependencies in a scratch venv.
pin:
	rm -rf .pin-venv && $(PYTHON) -m venv .pin-venv
	.pin-venv/bin/pip install --quiet . && .pin-venv/bin/pip uninstall --quiet -y push-gateway
	{ head -2 requirements.txt; .pin-venv/bin/pip freeze; } > requirements.txt.new && mv requirements.txt.new requirements.txt
	rm -rf .pin-venv

clean:
	rm -rf $(VENV) tests/js/node_modules bench/node/node_modules .pytest_cache .mypy_cache .ruff_cache
