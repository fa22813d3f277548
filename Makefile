# Two entry points for a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint dashboard

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# constraints.txt is a known-good resolution; torch==2.13.0 is the local CPU wheel
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# the operator dashboard (web/): npm packages, then its files and Leaflet's copied to the folder
# the API serves (git-ignored); `npm ci` installs exactly web/package-lock.json
DASHBOARD := services/api/dashboard_static/.built
$(DASHBOARD): web/package.json web/package-lock.json web/build.mjs $(wildcard web/src/* web/src/js/*)
	cd web && npm ci --no-audit --no-fund --loglevel=error
	cd web && npm run --silent build

dashboard: $(DASHBOARD)

setup: $(STAMP) $(DASHBOARD)

demo: setup
	$(VENV)/bin/skyeye demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest
