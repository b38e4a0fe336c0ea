# rowfill: two commands for a fresh machine.
#   make demo   a real backfill of 1M rows through a real Airflow 3, end to end
#   make test   the whole test suite (unit, PostgreSQL integration, Airflow end-to-end)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install system-deps demo demo-stop test test-fast bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

demo: install system-deps
	$(PY) scripts/demo.py $(DEMO_ARGS)

demo-stop: install
	$(PY) scripts/demo.py --stop

test: install system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: install system-deps
	$(VENV)/bin/pytest -m "not airflow" $(PYTEST_ARGS)

bench: install
	$(PY) bench/backfill_speed.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .demo *.egg-info include/*.egg-info
