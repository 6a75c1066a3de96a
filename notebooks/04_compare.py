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
# # 4. Compare runs and render the report
#
# Gathers the runs listed in a report file (`params/<study>/report.yaml`), makes sure each is
# evaluated (cached: `python -m lib.run --report` executes them first), and renders the
# study's markdown report with its figures and a JSON companion. The write is atomic: a
# failure keeps the last good report.
#
# * **MovieLens**: `reports/EVALUATION_REPORT.md`: the two-tower against the baselines, the
#   fix progression, ablations chosen on validation, paired bootstrap tests.
# * **wikiseq**: `reports/TWO_TOWER_V1_V2_COMPARISON.md`: why the learned query tower loses to
#   a heuristic query, separating the number of training pairs from the number of updates.

# %% tags=["parameters"]
# Parameters. `make report` sets output to the committed report path and run_overrides to {}.
# The defaults render the whole report on small generated data into build/ (smoke).
study = "movielens"
report_file = "../params/movielens/report.yaml"
output = "build/movielens/smoke/EVALUATION_REPORT.md"  # relative to the repository root
run_overrides = {"data": {"dataset": "synthetic"}, "train": {"max_epochs": 2, "batch_size": 256},
                 "evaluate": {"bootstrap": 200, "latency_repeats": 50}}

# %%
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd().parent))  # the repository root, so that `lib` imports
from lib.core import pipeline

pipeline.check_parameters("04_compare.ipynb", globals())  # an unknown or ignored parameter fails here

# %% [markdown]
# ## Render the report

# %%
result = pipeline.render_report(study, report_file, output=output, run_overrides=run_overrides)
pipeline.show(result)

# %% [markdown]
# ## The comparison
#
# The report's figures and its main tables, read back from what was just rendered (its JSON
# companion): the markdown report has the full text, the provenance and every table.

# %%
pipeline.show(pipeline.views(study).report_overview(result))
