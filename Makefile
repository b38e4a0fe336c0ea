# rowfill: two commands for a fresh machine.
#   make demo   a real backfill of 1M rows through a real Airflow 3, end to end
#   make test   the whole test suite (unit, PostgreSQL integration, Airflow end-to-end)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

CHROMIUM ?= /usr/bin/chromium

.PHONY: install system-deps browser demo demo-stop test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

# The UI page test drives Debian's chromium with Playwright (never `playwright install`, which
# downloads a browser build). Installed here when missing and we may; otherwise that test skips
# and says why.
browser:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (Debian package) for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else echo "note: $(CHROMIUM) missing and not root; the browser test will be skipped (apt-get install chromium)"; fi; \
	fi

demo: install system-deps
	$(PY) scripts/demo.py $(DEMO_ARGS)

demo-stop: install
	$(PY) scripts/demo.py --stop

test: install system-deps browser
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: install system-deps
	$(VENV)/bin/pytest -m "not airflow" $(PYTEST_ARGS)

bench: install
	$(PY) bench/backfill_speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo *.egg-info include/*.egg-info .mypy_cache .ruff_cache
