"""What the notebooks call: resolve a run (a params file, or the notebook's own smoke
sections), run its study's cached steps, render a report, and show results in a cell."""
from __future__ import annotations

from pathlib import Path

from . import studies
from .params import ParamsError, load_yaml
from .runs import Run, configure, run_from_file


def configure_from(params_file: str | None = None, **sections) -> Run:
    """A params file if given (as ``python -m lib.run`` would run it), else the sections."""
    return run_from_file(params_file) if params_file else configure(**sections)


def prepare(run: Run) -> dict:
    """The study's data step (cached): tables of the prepared data."""
    return run.steps.prepare(run)


def train(run: Run) -> dict:
    """The study's training step (cached): the training record's tables."""
    return run.steps.train(run)


def evaluate(run: Run) -> dict:
    """The study's evaluation step (cached): the metrics tables."""
    return run.steps.evaluate(run)


def render_report(study: str, report_file: str, output: str | None = None,
                  run_overrides: dict | None = None) -> dict:
    """Render the report a report file describes; ``run_overrides`` (smoke renders) are
    merged into every run it gathers."""
    path = Path(report_file)
    raw = load_yaml(path)
    unknown = set(raw) - {"study", "report"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['study', 'report']")
    mod = studies.report(raw.get("study", study))
    rcfg = mod.report_config(raw["report"])
    if output:
        rcfg["output"] = str(output)
    rcfg["run_overrides"] = run_overrides or {}
    rcfg["report_file"] = str(path.resolve())
    return mod.render_report(rcfg)


def show(result: dict) -> None:
    """Display a step's result in a notebook: tables as tables, figures as figures."""
    import pandas as pd
    try:
        from IPython.display import Markdown, display
    except ImportError:  # plain Python
        display, Markdown = print, str
    for key, value in (result or {}).items():
        if isinstance(value, pd.DataFrame):
            display(Markdown(f"**{key}**"))
            display(value)
        elif hasattr(value, "savefig"):
            display(value)
        else:
            print(f"{key}: {value}")
