"""What the notebooks call: resolve a run (a params file, or the notebook's own smoke
sections), run its study's cached steps, render a report, and show results in a cell."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import studies
from .params import ParamsError
from .runs import Run, configure, read_report_file, resolve_path, run_from_file


_IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def check_parameters(notebook: str, namespace: dict) -> None:
    """The parameters a notebook was given (its ``globals()``, after papermill's injected
    cell) are the names of its ``parameters`` cell, and a ``params_file`` comes alone:
    papermill itself only warns on an unknown name and would run the smoke defaults. Data
    values only (modules, classes and functions are the notebook's own imports)."""
    import ast
    import difflib
    import types

    from .notebooks import notebook_parameters_with_defaults
    declared = notebook_parameters_with_defaults(notebook)
    given = {k: v for k, v in namespace.items() if not k.startswith("_") and k not in _IPYTHON_NAMES
             and not isinstance(v, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType))}
    for name in sorted(set(given) - set(declared)):
        close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ParamsError(f"{notebook}: unknown parameter '{name}'{hint}; its parameters are {sorted(declared)}")
    if given.get("params_file") is not None:
        changed = [k for k, default in declared.items()
                   if k != "params_file" and k in given and given[k] != ast.literal_eval(default)]
        if changed:
            raise ParamsError(f"{notebook}: params_file is given, so {changed} would be ignored; put those "
                              f"values in the params file ({given['params_file']}) instead")


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
    path = resolve_path(report_file)
    study, rcfg = read_report_file(path, study)
    mod = studies.report(study)
    if output:
        rcfg["output"] = str(output)
    rcfg["run_overrides"] = run_overrides or {}
    rcfg["report_file"] = str(path.resolve())
    return mod.render_report(rcfg)


def views(run_or_study: Run | str) -> ModuleType:
    """The study's views module (``lib.<study>.views``): what the notebooks show of a run."""
    return studies.views(run_or_study if isinstance(run_or_study, str) else run_or_study.study)


def _png(fig) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def show(result: dict) -> None:
    """Display a step's or a view's result in a notebook: tables as tables, matplotlib
    figures and ``.png`` paths as images (rendered here, whatever the backend, so a figure
    closed after drawing shows exactly once), anything else as ``name: value``."""
    import pandas as pd
    try:
        from IPython.display import Image, Markdown, display
    except ImportError:  # plain Python
        Image = None
        display, Markdown = print, str
    for key, value in (result or {}).items():
        if isinstance(value, pd.DataFrame):
            display(Markdown(f"**{key}**"))
            with pd.option_context("display.max_colwidth", 200, "display.max_columns", 50):
                display(value)
        elif hasattr(value, "savefig") or (isinstance(value, Path) and value.suffix == ".png"):
            display(Markdown(f"**{key}**"))
            if Image is None:
                print(f"<figure {value}>")
            else:
                display(Image(filename=str(value)) if isinstance(value, Path) else Image(data=_png(value)))
        elif isinstance(value, str) and "\n" in value:
            print(f"{key}:\n{value}")
        else:
            print(f"{key}: {value}")
