# Everything a user or CI needs, from nothing but Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench bench-peers clean assets browser tools gauntlet

# The dashboard's chart library, fetched from the npm registry at the version
# web/package-lock.json pins, and copied where the daemon serves /static/.
VENDOR := daemon/stepline_daemon/static/vendor
VENDORED := $(VENDOR)/uPlot.iife.min.js $(VENDOR)/uPlot.min.css
NPM_STAMP := web/node_modules/.package-lock.json
# The browser tests drive Debian's chromium; Playwright never downloads its own.
CHROMIUM := /usr/bin/chromium
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

# apt-get install $(1), as root or through passwordless sudo; else say what to do.
define apt_install
	@if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "error: $(1) is missing; install it as root: apt-get update && apt-get install -y $(1)" >&2; exit 1; fi; \
	$$sudo apt-get update -q && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1)
endef

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[daemon,test]' pandas numpy
	touch $(STAMP)

test: $(STAMP) assets browser tools
	$(PY) -m pytest -q

assets: $(VENDORED)

$(NPM_STAMP): web/package.json web/package-lock.json
	@command -v npm >/dev/null || { echo "error: make assets needs npm (apt-get install npm)" >&2; exit 1; }
	npm ci --prefix web --no-audit --no-fund
	touch $@

$(VENDOR)/%: $(NPM_STAMP)
	mkdir -p $(VENDOR)
	cp web/node_modules/uplot/dist/$* $@

browser: $(CHROMIUM)

# The systemd tests run the real systemd-analyze and systemd-socket-activate,
# and strace for the sandbox check; the cluster tests start Debian's
# clickhouse-server on loopback ports (never the system service).
tools: /usr/bin/systemd-analyze /usr/bin/strace /usr/sbin/clickhouse-server

/usr/bin/systemd-analyze:
	$(call apt_install,systemd)

/usr/bin/strace:
	$(call apt_install,strace)

/usr/sbin/clickhouse-server:
	$(call apt_install,clickhouse-server)

$(CHROMIUM):
	$(call apt_install,chromium)

# The long form of tests/gauntlet (crash loops, fuzzing, load; ~30 min), then
# its figures into the README. `make test` runs the short form.
gauntlet: $(STAMP) assets browser tools
	rm -rf tests/gauntlet/results
	STEPLINE_GAUNTLET=long $(PY) -m pytest -q -p no:cacheprovider --timeout 1800 tests/gauntlet
	$(PY) -m tests.gauntlet.report

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[daemon,bench]'
	$(PY) -m bench

bench-peers: $(STAMP)
	$(PY) -m pip install -q -e '.[daemon,bench]'
	$(PY) -m bench --peers

demo: $(STAMP) assets
	$(PY) examples/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis web/node_modules $(VENDOR)
