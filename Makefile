# bgdeploy — every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps test test-quick lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
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

test: install system-deps
	$(BIN)/python -m pytest -q

test-quick: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/python tools/demo.py

bench: install
	$(BIN)/python tools/bench.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
