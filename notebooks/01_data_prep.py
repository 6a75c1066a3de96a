# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,language_info
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # 1. Data preparation
#
# This notebook is the first of the three that make a run (`01_data_prep` → `02_train` →
# `03_evaluate`; `04_compare` gathers runs into a report). It prepares the data named by the
# run's `data` section and shows what the models will be trained and evaluated on:
#
# * **MovieLens** (`study = "movielens"`): the ratings of ML-1M or ML-100K (or small generated
#   data of the same format), a k-core filter on users and items, and **one global time
#   split**: the first 80% of all ratings in time train, the next 10% validate, the last 10%
#   test, so that every model predicts the future from the past.
# * **wikiseq** (`study = "wikiseq"`): a *bank* of sentence-chunk vectors (Wikipedia articles
#   embedded with all-MiniLM-L6-v2, or generated vectors) and *pairs*: a context of `ctx_len`
#   consecutive chunks of an article and the chunk that follows it. Pairs are split **by
#   article**, so that no validation context overlaps a training one.
#
# The result is cached by the hash of the `data` section (and the code that prepares it).

# %% tags=["parameters"]
# Parameters. papermill replaces this cell with a params file's values
# (python -m lib.run params/<study>/<run>.yaml). The defaults are the *smoke* size:
# small generated MovieLens-like data and two epochs, so `pytest --nbmake notebooks/` is fast.
# In Jupyter, set params_file to a file under params/ (either study) to show that run instead.
params_file = None
study = "movielens"
run = "smoke"
data = {"dataset": "synthetic"}
model = {}
loss = {}
train = {"max_epochs": 2, "batch_size": 256}
evaluate = {"bootstrap": 200, "latency": True, "latency_repeats": 50}
seed = 0
device = "cpu"

# %%
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd().parent))  # the repository root, so that `lib` imports
from lib.core import pipeline

pipeline.check_parameters("01_data_prep.ipynb", globals())  # an unknown or ignored parameter fails here

# %% [markdown]
# ## The run
#
# The parameters resolve into a *run*: the study's defaults with the given sections merged
# over them (an unknown key or an impossible value is an error here, before anything runs).
# Its artifacts are cached under `build/<study>/` by the hash of what computes them, so the
# cells below are instant when the run was already done (by `python -m lib.run` or an
# earlier notebook). `views` is what these notebooks show of a run of this study
# (`lib/<study>/views.py`).

# %%
run = pipeline.configure_from(params_file, study=study, run=run, data=data, model=model, loss=loss,
                              train=train, evaluate=evaluate, seed=seed, device=device)
views = pipeline.views(run)
print(f"run {run.cfg['run']} of study {run.cfg['study']}; artifacts in {run.dir}")

# %% [markdown]
# ## Prepare the data
#
# The cached step: read (or build) the prepared data. The first time, MovieLens files are
# verified against their published checksums; a wikiseq bank is embedded once and shared by
# every run on it.

# %%
result = pipeline.prepare(run)

# %% [markdown]
# ## What the data looks like
#
# The statistics of the prepared data; the split as a figure (MovieLens: ratings per week,
# coloured by split, with the cumulative share of ratings; wikiseq: chunks per article, and
# which articles train and which validate); and a few rows (MovieLens: ratings of each split
# with their titles; wikiseq: context/target pairs with the texts of the last context chunk
# and of the target, where the bank has texts).

# %%
pipeline.show(views.data_overview(run))
