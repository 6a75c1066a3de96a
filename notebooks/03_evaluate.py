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
# # 3. Evaluation
#
# Evaluates the trained model of notebook 2 and writes `metrics.json` in the run folder (the
# report reads it).
#
# * **MovieLens**: for every user with a relevant (rating ≥ `test_min_rating`) held-out
#   rating, the top-K over the **whole catalog**, the user's training items excluded; Recall,
#   Precision, NDCG and HitRate at K, with bootstrap confidence intervals over users.
# * **wikiseq**: for every query of the common evaluation set (the same for every run), the
#   rank of the true next chunk among **all** the chunks of the bank; Recall@K, for the trained
#   tower and for heuristic queries (the last chunk, the mean, an exponentially weighted mean
#   of the context).

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

pipeline.check_parameters("03_evaluate.ipynb", globals())  # an unknown or ignored parameter fails here

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
# ## Evaluate
#
# The cached step: evaluates unless `metrics.json` holds this run's key (then instant).

# %%
result = pipeline.evaluate(run)

# %% [markdown]
# ## Metrics at K
#
# The metrics at each cut-off K, with 95% bootstrap confidence intervals (resampling users,
# or queries): the figure, then the tables.

# %%
pipeline.show(views.metrics_overview(run))

# %% [markdown]
# ## FAISS against brute force
#
# Retrieval runs through a FAISS index. With an exact index it must return what scoring every
# item would: the evaluation's own check (MovieLens) and a re-check here on a sample of users
# or queries against a plain numpy brute force. wikiseq also shows what an approximate
# (IVF-flat) index and a smaller bank change.

# %%
pipeline.show(views.retrieval_check(run))

# %% [markdown]
# ## One example
#
# One user (MovieLens: a typical one, the median training history among the evaluated
# users, not a picked success) or one evaluation query (wikiseq): what the model saw, what
# was relevant, and what it retrieved.

# %%
pipeline.show(views.example_query(run))
