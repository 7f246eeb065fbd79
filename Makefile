# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs; nothing else is required.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck sysdeps bench clean constants example
JSDEPS := tests/browser/js/node_modules/.installed-stamp
EXAMPLES_JS := examples/node_modules/.installed-stamp

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# System packages the tests need: Debian's Chromium for the browser tests (Playwright cannot
# download one here), redis-server and nginx for the scale-out tests (tests/cluster.py).
# Only what is missing is installed, with one apt-get update at most.
sysdeps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	test -z "$$missing" || { \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; }

# Real react, react-dom, @tanstack/query-core and solid-js for the browser bridge tests (lockfile-pinned).
$(JSDEPS): tests/browser/js/package.json tests/browser/js/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --prefix tests/browser/js
	touch $(JSDEPS)

# The npm libraries the examples' pages load (examples/package.json, lockfile-pinned).
$(EXAMPLES_JS): examples/package.json examples/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm ci --no-audit --no-fund --prefix examples
	touch $(EXAMPLES_JS)

# `make example NAME=maestro PORT=8800`: one of examples/<name>/, set up and running.
NAME ?= maestro
PORT ?= 8800
example: $(STAMP) $(EXAMPLES_JS)
	$(PY) examples/$(NAME)/app.py --port $(PORT)

# `make demo DEMO_PORT=9000` serves the dashboard on another port.
DEMO_PORT ?= 8765
demo: $(STAMP)
	$(VENV)/bin/tether demo --port $(DEMO_PORT)

# The browser client's shared constants, generated from the Python source (tests/test_jsgen.py
# fails when they are stale).
constants: $(STAMP)
	$(PY) -m tether.jsgen

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src

test: lint typecheck sysdeps $(JSDEPS) $(EXAMPLES_JS)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/fanout.py
	$(PY) benchmarks/topics.py
	$(PY) benchmarks/storm.py
	$(PY) benchmarks/fleet.py
	$(PY) benchmarks/http_publish.py

clean:
	rm -rf $(VENV) tests/browser/js/node_modules examples/node_modules build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
