"""Write the four pipeline notebooks (source of truth for their cells; outputs never committed).

    python tools/make_notebooks.py
"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent.parent / "notebooks"

SETUP = '''import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd().parent))  # the repository root, so that `lib` imports
from lib.core import pipeline'''

RUN_PARAMS = '''# Parameters. papermill replaces this cell with a params file's values
# (python -m lib.run params/<study>/<run>.yaml). The defaults are the *smoke* size:
# small generated data and two epochs, so `pytest --nbmake notebooks/` is fast.
# In Jupyter, set params_file to a file under params/ to run that run instead.
params_file = None
study = "movielens"
run = "smoke"
data = {"dataset": "synthetic"}
model = {}
loss = {}
train = {"max_epochs": 2, "batch_size": 256}
evaluate = {"bootstrap": 200, "latency": True, "latency_repeats": 50}
seed = 0
device = "cpu"'''

CONFIGURE = '''run = pipeline.configure_from(params_file, study=study, run=run, data=data, model=model, loss=loss,
                              train=train, evaluate=evaluate, seed=seed, device=device)
print(f"run {run.cfg['run']} of study {run.cfg['study']}; artifacts in {run.dir}")'''


def notebook(title: str, intro: str, params: str, cells: list[tuple[str, str]]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbf.v4.new_markdown_cell(f"# {title}\n\n{intro}"))
    nb.cells.append(nbf.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    nb.cells.append(nbf.v4.new_code_cell(SETUP))
    for kind, src in cells:
        nb.cells.append(nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src))
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    return nb


NOTEBOOKS = {
    "01_data_prep.ipynb": notebook(
        "1. Data preparation",
        "Loads the dataset named by the run's `data` section (verifying every file it reads), "
        "applies the evaluation protocol (k-core filter, global time split) or, for the "
        "sequence study, builds the vector bank and the context/target pairs. The result is "
        "cached by the hash of the `data` section.",
        RUN_PARAMS,
        [("code", CONFIGURE), ("code", "result = pipeline.prepare(run)\npipeline.show(result)")]),
    "02_train.ipynb": notebook(
        "2. Training",
        "Trains the run's model (a two-tower or a baseline) on the training split; early "
        "stopping and model selection look at the validation split only. The per-epoch "
        "table is what the report shows.",
        RUN_PARAMS,
        [("code", CONFIGURE), ("code", "result = pipeline.train(run)\npipeline.show(result)")]),
    "03_evaluate.ipynb": notebook(
        "3. Evaluation",
        "Ranks the full catalog (or bank) for every evaluated user or query, excluding "
        "already-seen items, and computes the metrics with bootstrap confidence intervals. "
        "Writes `metrics.json` in the run folder; the report reads it.",
        RUN_PARAMS,
        [("code", CONFIGURE), ("code", "result = pipeline.evaluate(run)\npipeline.show(result)")]),
    "04_compare.ipynb": notebook(
        "4. Compare runs and render the report",
        "Gathers the runs listed in a report file, makes sure each is evaluated (cached), and "
        "renders the study's markdown report, its figures and its JSON companion. The write "
        "is atomic: a failure keeps the last good report.",
        '''# Parameters. `make report` sets output to the committed report path and run_overrides to {}.
# The defaults render the whole report on small generated data into build/ (smoke).
study = "movielens"
report_file = "../params/movielens/report.yaml"
output = "build/movielens/smoke/EVALUATION_REPORT.md"  # relative to the repository root
run_overrides = {"data": {"dataset": "synthetic"}, "train": {"max_epochs": 2, "batch_size": 256},
                 "evaluate": {"bootstrap": 200, "latency_repeats": 50}}''',
        [("code", '''result = pipeline.render_report(study, report_file, output=output, run_overrides=run_overrides)
pipeline.show(result)''')]),
}

if __name__ == "__main__":
    for name, nb in NOTEBOOKS.items():
        nbf.write(nb, HERE / name)
        print("wrote", HERE / name)
