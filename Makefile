# bgdeploy — every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps test test-quick lint demo bench clean

install: $(STAMP)

# The router's request path is compiled from its .py files and their .pxd declarations
# (setup.py); an edited source is rebuilt here, and the tests refuse to run against a
# compiled module older than it.
ROUTER_SOURCES := $(wildcard bgdeploy/router/*.py bgdeploy/router/*.pxd)

$(STAMP): pyproject.toml setup.py $(ROUTER_SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 'setuptools>=68' 'cython>=3.0'
	$(BIN)/python -m pip install --quiet --no-build-isolation -e '.[dev]'
	touch $(STAMP)

# The dashboard's browser test needs Debian's chromium, the terminal test tmux, the
# PostgreSQL registry tests a throw-away server from Debian's postgresql; install them
# where we can (root with apt-get), else those tests skip and say why.
PG_BIN ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin))
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v tmux >/dev/null 2>&1 \
	    || [ ! -x "$(PG_BIN)/initdb" ]; then \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium tmux postgresql \
	    >/dev/null; } \
	  || echo "chromium/tmux/postgresql could not be installed: the browser, terminal and" \
	    "PostgreSQL tests will skip"; \
	fi

# The router's tests, run a second time against the pure-Python build of the request path.
ROUTER_TESTS := tests/unit/test_fast_path.py tests/integration/test_router.py \
	tests/integration/test_abuse.py tests/integration/test_security.py \
	tests/integration/test_zero_downtime.py tests/integration/test_smuggling.py \
	tests/integration/test_build.py tests/integration/test_preview_pause.py \
	tests/integration/test_maintenance_limits.py tests/integration/test_canary.py \
	tests/integration/test_replica_balancing.py

# Two test processes (pytest-xdist) on the two cores: the tests mostly wait on the
# processes they start. A file's tests stay on one worker (--dist loadfile): its module
# fixtures run once, and the failpoint campaign's N/N figure counts every failpoint.
XDIST := -n 2 --dist loadfile

test: install system-deps
	$(BIN)/python -m pytest -q $(XDIST)
	BGDEPLOY_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q $(XDIST) $(ROUTER_TESTS)

test-quick: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/python tools/demo.py

# The references the bench measures the router against, from Debian where we can.
bench: install
	@missing=""; for t in nginx wrk haproxy caddy; do \
	  command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; \
	done; \
	if [ -n "$$missing" ]; then \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	       $$(echo $$missing | sed 's/nginx/nginx-light/') >/dev/null; } \
	  || echo "could not install$$missing with apt-get: install them, then run make bench"; \
	fi
	$(BIN)/python tools/bench.py
	$(BIN)/python tools/bench_replicas.py
	$(BIN)/python tools/bench_user.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info bgdeploy/router/*.c bgdeploy/router/*.so
