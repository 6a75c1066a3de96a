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
# glibc's malloc: keep freed blocks up to 32 MB in the heap instead of returning them to the
# kernel at each free (a training step's 14 MB logit matrices were page-faulted in anew each
# step: a fifth of a full-softmax step on interaction batches). Same results, less system time.
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 268435456
# Runs executed at a time by `make report` (each run trains with one torch thread: one per core).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# When `make report` started: the MovieLens report states its own wall time.
# (`:=`, evaluated once when make starts: a `?=` variable would re-run `date` at each use)
ifndef TWOTOWER_REPORT_START
TWOTOWER_REPORT_START := $(shell date +%s)
endif
export TWOTOWER_REPORT_START

.PHONY: setup test unit integration e2e notebooks sync-notebooks report report-movielens report-wikiseq \
        report-wikiseq-quick example bench bench-scale bench-wikiseq tune clean strip

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

# Every tier: unit, integration (real MovieLens), end to end (papermill, notebooks at smoke size).
test: setup
	$(PY) -m pytest -q tests notebooks --nbmake

# Tiers (tests/conftest.py gives every test one): fast unit tests; the real-data tests; end to end.
unit: setup
	$(PY) -m pytest -q -m "unit and not slow" tests

integration: setup
	$(PY) -m pytest -q -m integration tests

e2e: setup
	$(PY) -m pytest -q -m e2e tests notebooks --nbmake

notebooks: setup
	$(PY) -m pytest -q --nbmake notebooks

# The notebooks' source of truth is notebooks/*.py (jupytext percent format): edit those (or
# the .ipynb in Jupyter, then `jupytext --sync`) and regenerate the .ipynb without outputs.
sync-notebooks: setup
	$(VENV)/bin/jupytext --to ipynb --update notebooks/0*.py

# `make report` regenerates the committed reports; `make report REPORT=params/<name>/report.yaml`
# runs one report file instead (e.g. a report on your own data: README, "Your data").
ifdef REPORT
report: setup
	$(PY) -m lib.run --report $(REPORT) --jobs $(JOBS) $(HTML_FLAG) $(DEVICE_FLAG)
else
report: report-movielens report-wikiseq
endif

# Every model's hyperparameters searched with one budget of Optuna trials on validation
# (params/movielens/tuning/tune.yaml; resumable): writes params/movielens/tuning/*. Too slow
# for `make report`, which trains the configurations it chose. TUNE_ARGS="--datasets ml-100k".
# Models run $(JOBS) at a time (one process each: both cores busy); DEVICE=cuda on a GPU.
tune: setup
	$(PY) -m lib.movielens.tune params/movielens/tuning/tune.yaml --jobs $(JOBS) $(DEVICE_FLAG) $(TUNE_ARGS)

# The "Your data" example: a generated interactions log (data/example/, git-ignored) and its
# report, reports/example.md.
example: setup
	$(PY) -m lib.movielens.example data/example
	$(PY) -m lib.run --report params/example/report.yaml --jobs $(JOBS) $(HTML_FLAG) $(DEVICE_FLAG)

# The tests the MovieLens report states, run alongside its runs (a pytest process keeps about
# one core busy; the runs use what it leaves): the report renders once they passed. The results
# are written under a temporary name, then moved, so an interrupted run leaves the last good file.
# tests/test_reports_fresh.py is left out: it checks that the committed reports match the params
# files, i.e. the very report being regenerated.
REPORT_TESTS = $(PY) -m pytest -q tests --ignore=tests/test_reports_fresh.py -p no:cacheprovider \
	--junitxml=build/test-results.xml.tmp && mv build/test-results.xml.tmp build/test-results.xml

# HTML=1 also exports every executed notebook to HTML beside it (build/<study>/runs/<run>/).
HTML_FLAG := $(if $(HTML),--html,)
# DEVICE=cuda (or auto: cuda when torch sees a GPU) runs every run of a report there instead of
# its params' device (cpu); the runs made on another device are other runs (their own folders).
DEVICE_FLAG := $(if $(DEVICE),--device $(DEVICE),)

report-movielens: setup
	mkdir -p build
	$(PY) -m lib.run --report params/movielens/report.yaml --jobs $(JOBS) $(HTML_FLAG) $(DEVICE_FLAG) \
		--alongside "$(REPORT_TESTS)"

# Under `make report` the sequence study starts after the MovieLens one: its report states its own
# wall time from then (alone, `make report-wikiseq` counts from make's start, setup included).
report-wikiseq: setup
	$(if $(filter report,$(MAKECMDGOALS)),TWOTOWER_REPORT_START=$$(date +%s) )$(PY) -m lib.run \
		--report params/wikiseq/report.yaml --jobs $(JOBS) $(HTML_FLAG) $(DEVICE_FLAG)

# The sequence study at quick-profile size, rendered into build/ (never over the committed report).
report-wikiseq-quick: setup
	$(PY) -m lib.run --report params/wikiseq/report_quick.yaml --jobs $(JOBS) $(HTML_FLAG) $(DEVICE_FLAG)

# The speed targets (lib/movielens/bench.py): the reference epoch with 2 torch threads on the CPU;
# BENCH_ARGS=--device cuda on a GPU.
BENCH_ARGS ?= --threads 2
bench: setup
	$(PY) -m lib.movielens.bench $(BENCH_ARGS)

# The study at MovieLens-20M size on a generated log (lib/movielens/bench_scale.py): wall time and peak
# RSS per step, against the issue's targets. BENCH_SCALE=0.1 for a quick look (the targets are stated
# for 1.0); BENCH_SCALE_ARGS for more (--device cuda, --max-epochs N, --keep DIR, --tracemalloc).
BENCH_SCALE ?= 1.0
BENCH_SCALE_ARGS ?=
bench-scale: setup
	mkdir -p build
	$(PY) -m lib.movielens.bench_scale --scale $(BENCH_SCALE) --json build/bench_scale.json $(BENCH_SCALE_ARGS)

bench-wikiseq: setup
	$(PY) -m lib.wikiseq.bench

strip: setup
	$(VENV)/bin/nbstripout --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.execution" notebooks/*.ipynb

clean:
	rm -rf build
