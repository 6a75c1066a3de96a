# twotower-lab: `make report` regenerates every report from data; `make test` runs the tests.
# Both set up the virtual environment on first use (.venv, from requirements*.txt).

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Where MovieLens lives: a folder with ml-1m/ and ml-100k/ laid out like the official archives.
# Defaults to ../shared/data when it exists; unset, the official archive is downloaded (checksummed).
TWOTOWER_DATA_ROOT ?= $(if $(wildcard ../shared/data/ml-1m),$(abspath ../shared/data),)
export TWOTOWER_DATA_ROOT
export PYTHONPATH := $(CURDIR)
export MPLBACKEND := Agg
# torch and faiss each bring OpenMP; pin both to the machine's cores (2 here).
export OMP_NUM_THREADS ?= 2
# Runs executed at a time by `make report` (each run trains with one torch thread: one per core).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# When `make report` started: the MovieLens report states its own wall time.
# (`:=`, evaluated once when make starts: a `?=` variable would re-run `date` at each use)
ifndef TWOTOWER_REPORT_START
TWOTOWER_REPORT_START := $(shell date +%s)
endif
export TWOTOWER_REPORT_START

.PHONY: setup test unit notebooks report report-movielens report-wikiseq bench clean strip

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests notebooks --nbmake

unit: setup
	$(PY) -m pytest -q tests

notebooks: setup
	$(PY) -m pytest -q --nbmake notebooks

report: report-movielens report-wikiseq

# The report states these results. tests/test_reports_fresh.py is left out here: it checks
# that the committed reports match the params files, i.e. the very report being regenerated.
build/test-results.xml: setup
	mkdir -p build
	$(PY) -m pytest -q tests --ignore=tests/test_reports_fresh.py --junitxml=build/test-results.xml

report-movielens: setup build/test-results.xml
	$(PY) -m lib.run --report params/movielens/report.yaml --jobs $(JOBS)

report-wikiseq: setup
	$(PY) -m lib.run --report params/wikiseq/report.yaml

bench: setup
	$(PY) -m lib.bench

strip: setup
	$(VENV)/bin/nbstripout --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution" notebooks/*.ipynb

clean:
	rm -rf build
