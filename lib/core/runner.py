"""Execute runs (notebooks 01-03) and reports (04) with papermill, one or several at a time.

Every params file is validated before anything executes. A run whose metrics are up to
date for its params and code is skipped. With ``jobs > 1`` each run's notebook output
goes to ``build/<study>/runs/<run>/run.log`` and a line is printed as each run ends; every
run is attempted, and a failure names the run (nothing downstream, the report, renders).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from . import notebooks, studies
from .params import ParamsError, load_yaml
from .runs import ROOT, build_root, configure, run_parameters


def run_one(path: str | Path, force: bool = False, overrides: dict | None = None,
            quiet: bool = False, html: bool = False) -> Path:
    """Execute notebooks 01-03 for one params file, unless its results are up to date.
    ``quiet``: the notebooks' output goes to ``<run dir>/run.log`` only (parallel runs);
    ``html``: also export each executed notebook to HTML."""
    params = run_parameters(path, overrides)
    run = configure(**params)
    run_dir = run.dir
    name = run.cfg["run"]
    if not force and run.is_up_to_date() and all((run_dir / nb).is_file() for nb in notebooks.RUN_NOTEBOOKS):
        print(f"[{name}] up to date", flush=True)
        return run_dir
    if force:
        (run_dir / "metrics.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(run_dir / "run.log", "w") if quiet else contextlib.nullcontext() as log:
        for nb in notebooks.RUN_NOTEBOOKS:
            if not quiet:
                print(f"[{name}] executing {nb}", flush=True)
            notebooks.execute(nb, params, run_dir, log, html=html)
    print(f"[{name}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return run_dir


def _split(item) -> tuple[Path, dict | None]:
    return item if isinstance(item, tuple) else (item, None)


def expected_cost(item) -> int:
    """Rough order of a run's cost, to start the longest first when running in parallel."""
    path, overrides = _split(item)
    if overrides:
        return 0  # other, smaller datasets
    raw = load_yaml(path)
    model, train = raw.get("model") or {}, raw.get("train") or {}
    if model.get("kind", "two_tower") != "two_tower":
        return 0
    return 1 if train.get("batching") == "users" else 2


def run_many(items: list, jobs: int = 1, force: bool = False, html: bool = False) -> None:
    """Run several params files (or ``(file, overrides)`` pairs), ``jobs`` at a time (each
    run's torch uses its own ``train.threads``; the default 1 fits one run per core)."""
    if jobs <= 1 or len(items) <= 1:
        for item in items:
            p, ov = _split(item)
            run_one(p, force=force, overrides=ov, html=html)
        return
    from concurrent.futures import ThreadPoolExecutor
    order = sorted(items, key=expected_cost, reverse=True)
    failed = []

    def one(item):
        p, ov = _split(item)
        try:
            run_one(p, force=force, overrides=ov, quiet=True, html=html)
        except Exception as exc:  # noqa: BLE001 - reported below, with the run's log
            failed.append((p, exc))
            print(f"[{Path(p).stem}] FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  flush=True)

    print(f"running {len(order)} runs, {jobs} at a time; each run's notebook output is in "
          f"{build_root()}/<study>/runs/<run>/run.log", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, order))
    if failed:
        names = ", ".join(Path(p).stem for p, _ in failed)
        raise RuntimeError(f"{len(failed)} run(s) failed: {names} (see their run.log)") from failed[0][1]


def read_report_file(path: str | Path) -> tuple[str, dict]:
    """A report file's study and its validated ``report`` section (the study's
    ``report_config``, with ``runs`` and ``derived_runs``)."""
    path = Path(path)
    raw = load_yaml(path)
    unknown = set(raw) - {"study", "report"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['study', 'report']")
    if not raw.get("report"):
        raise ParamsError(f"{path}: a report file needs a 'report' section")
    study = raw.get("study", path.parent.name)
    return study, studies.report(study).report_config(raw["report"])


def report(path: str | Path, output: str | None = None, force: bool = False, jobs: int = 1,
           html: bool = False) -> None:
    """Execute every run a report file lists (validated first), then notebook 04."""
    path = Path(path)
    study, rcfg = read_report_file(path)
    notebooks.check_notebooks()
    run_files = [ROOT / p for p in rcfg["runs"]] + [(ROOT / p, ov) for p, ov in rcfg.get("derived_runs", [])]
    for item in run_files:  # validate everything before executing anything
        run_parameters(*_split(item))
    run_many(run_files, jobs=jobs, force=force, html=html)
    params = {"study": study, "report_file": str(path.resolve()), "output": output, "run_overrides": {}}
    notebooks.execute(notebooks.REPORT_NOTEBOOK, params, build_root() / study / "report", html=html)
