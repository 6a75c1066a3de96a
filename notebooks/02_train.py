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
# # 2. Training
#
# Trains the run's model on the training data of notebook 1 (cached: a model is trained once
# for its data, model, loss, train and seed settings, and shared by runs that differ only in
# evaluation).
#
# * **MovieLens**: a two-tower (a user tower and an item tower, each an MLP over features and
#   optionally ids and history, their dot product the score) trained with the run's loss, early
#   stopping on the validation split; or a baseline (popularity, item-kNN, EASE, BPR, iALS...),
#   whose hyperparameters are chosen on the validation split. The test split is never looked at.
# * **wikiseq**: a query tower (a GRU over the context's chunk vectors) trained with in-batch
#   InfoNCE against an identity document tower; validation recall over the whole bank is
#   measured after every epoch.

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

pipeline.check_parameters("02_train.ipynb", globals())  # an unknown or ignored parameter fails here

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
# ## Train the model
#
# The cached step: trains unless the model store holds this model (then instant). The
# progress lines below are printed only when it trains.

# %%
result = pipeline.train(run)

# %% [markdown]
# ## The model
#
# What was trained and how big it is: the towers and their parameter counts (a baseline:
# its hyperparameters and how they were chosen).

# %%
pipeline.show(views.model_overview(run))

# %% [markdown]
# ## One training batch
#
# The first batch the trainer drew, rebuilt with the same seed: what one optimisation step
# sees. MovieLens: (user, positive item) pairs with their titles and the sampled negatives;
# wikiseq: context/target pairs (the other targets of the batch are each context's negatives).

# %%
pipeline.show(views.training_batch(run))

# %% [markdown]
# ## Training and validation curves
#
# From the training record: the loss on the training and on the validation data, and the
# validation ranking metrics, per epoch. MovieLens keeps the best epoch's weights (early
# stopping); wikiseq runs every epoch (epoch 0 is before training).

# %%
pipeline.show(views.training_curves(run))
