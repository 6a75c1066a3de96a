"""Execute runs and reports with papermill.

    python -m lib.run params/movielens/mixed_neg16.yaml [more.yaml ...] [--force]
    python -m lib.run --report params/movielens/report.yaml [--output PATH] [--jobs 2]
    python -m lib.run --check params/movielens/*.yaml   # validate only

A run executes notebooks 01-03 with the params file; a report executes 04, which gathers
the runs its report file lists. Every params file is validated (top-level keys against
the notebooks' ``parameters`` cells via ``papermill.inspect_notebook``, nested keys
against the study's defaults) *before* anything executes: papermill itself only warns on
an unknown parameter, and a typo must fail. Executed notebooks go to
``build/<study>/runs/<run>/`` (git-ignored).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from .config import ParamsError, load_yaml, params_hash
from .pipeline import ROOT, TOP_LEVEL, Run, build_root, configure, is_up_to_date

NOTEBOOKS = ROOT / "notebooks"
RUN_NOTEBOOKS = ("01_data_prep.ipynb", "02_train.ipynb", "03_evaluate.ipynb")
REPORT_NOTEBOOK = "04_compare.ipynb"


def notebook_parameters(name: str) -> set[str]:
    import papermill
    return set(papermill.inspect_notebook(str(NOTEBOOKS / name)))


def run_parameters(path: str | Path, overrides: dict | None = None, check_notebooks: bool = True) -> dict:
    """The notebook parameters for a run params file: every section present (an omitted
    section means the study defaults, never the notebook's smoke values). ``overrides``:
    sections merged over the file's, and ``seed``/``device`` replacing its values.
    ``check_notebooks=False`` skips the comparison with the notebooks' parameters cells
    (for callers that run the steps without papermill, such as ``lib.bench``)."""
    path = Path(path)
    raw = load_yaml(path)
    study = raw.get("study", path.parent.name)
    unknown = set(raw) - set(TOP_LEVEL) - {"study"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {list(TOP_LEVEL)}")
    if check_notebooks:
        allowed = set.intersection(*(notebook_parameters(nb) for nb in RUN_NOTEBOOKS))
        missing = set(TOP_LEVEL) - allowed
        if missing:  # the notebooks and lib disagree: a bug in the project, not in the params
            raise RuntimeError(f"notebook parameters cells lack {sorted(missing)}")
    ov = overrides or {}
    params = {"study": study, "run": path.stem, "seed": ov.get("seed", raw.get("seed", 0)),
              "device": ov.get("device", raw.get("device", "cpu"))}
    for section in ("data", "model", "loss", "train", "evaluate"):
        params[section] = _deep_merge(raw.get(section) or {}, ov.get(section) or {})
    if overrides:
        params["run"] = f"{path.stem}-{params_hash(overrides, 6)}"
    cfg = configure(**params).cfg  # raises ParamsError on any unknown/mistyped/impossible value
    params["_cfg"] = cfg
    return params


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def execute(notebook: str, parameters: dict, out_dir: Path, log=None) -> Path:
    """Execute one notebook with papermill; its cell output goes to ``log`` (default:
    this process's stdout/stderr)."""
    import papermill
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / notebook
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(target), parameters=parameters,
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               log_output=True, stdout_file=log or sys.stdout, stderr_file=log or sys.stderr)
    return target


def run_one(path: str | Path, force: bool = False, overrides: dict | None = None,
            quiet: bool = False) -> Path:
    """Execute notebooks 01-03 for one params file, unless its results are up to date.
    ``quiet``: the notebooks' output goes to ``<run dir>/run.log`` only (parallel runs)."""
    params = run_parameters(path, overrides)
    cfg = params.pop("_cfg")
    run = Run(cfg)
    run_dir = run.dir
    if not force and is_up_to_date(run) and all((run_dir / nb).is_file() for nb in RUN_NOTEBOOKS):
        print(f"[{cfg['run']}] up to date", flush=True)
        return run_dir
    for stale in ("train.json", "metrics.json") if force else ():
        (run_dir / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(run_dir / "run.log", "w") if quiet else contextlib.nullcontext() as log:
        for nb in RUN_NOTEBOOKS:
            if not quiet:
                print(f"[{cfg['run']}] executing {nb}", flush=True)
            execute(nb, params, run_dir, log)
    print(f"[{cfg['run']}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return run_dir


def expected_cost(item) -> int:
    """Rough order of a run's cost, to start the longest first when running in parallel."""
    path, overrides = item if isinstance(item, tuple) else (item, None)
    if overrides:
        return 0  # other, smaller datasets
    raw = load_yaml(path)
    model, train = raw.get("model") or {}, raw.get("train") or {}
    if model.get("kind", "two_tower") != "two_tower":
        return 0
    return 1 if train.get("batching") == "users" else 2


def run_many(items: list, jobs: int = 1, force: bool = False) -> None:
    """Run several params files (or ``(file, overrides)`` pairs), ``jobs`` at a time (each
    run's torch uses its own ``train.threads``; the default 1 fits one run per core). Every
    run is attempted; if any fails, the error names it and nothing downstream (the report)
    is rendered."""
    def split(item):
        return item if isinstance(item, tuple) else (item, None)

    if jobs <= 1 or len(items) <= 1:
        for item in items:
            p, ov = split(item)
            run_one(p, force=force, overrides=ov)
        return
    from concurrent.futures import ThreadPoolExecutor
    order = sorted(items, key=expected_cost, reverse=True)
    failed = []

    def one(item):
        p, ov = split(item)
        try:
            run_one(p, force=force, overrides=ov, quiet=True)
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


def report(path: str | Path, output: str | None = None, force: bool = False, jobs: int = 1) -> None:
    path = Path(path)
    raw = load_yaml(path)
    study = raw.get("study", path.parent.name)
    if not set(raw.get("report", {})):
        raise ParamsError(f"{path}: a report file needs a 'report' section")
    unknown = set(raw) - {"study", "report"}
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: ['study', 'report']")
    allowed = notebook_parameters(REPORT_NOTEBOOK)
    params = {"study": study, "report_file": str(path.resolve()), "output": output}
    if set(params) - allowed:
        raise RuntimeError(f"{REPORT_NOTEBOOK} parameters cell lacks {sorted(set(params) - allowed)}")
    from .pipeline import study_module
    rcfg = study_module(study).report_config(raw["report"])
    run_files = [ROOT / p for p in rcfg["runs"]] + [(ROOT / p, ov) for p, ov in rcfg.get("derived_runs", [])]
    for item in run_files:  # validate everything before executing anything
        run_parameters(*(item if isinstance(item, tuple) else (item,)))
    run_many(run_files, jobs=jobs, force=force)
    out_dir = build_root() / study / "report"
    params["run_overrides"] = {}
    execute(REPORT_NOTEBOOK, params, out_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="*")
    ap.add_argument("--report", help="a report params file (params/<study>/report.yaml)")
    ap.add_argument("--output", help="markdown path of the report (default: the report file's)")
    ap.add_argument("--check", action="store_true", help="validate the params files only")
    ap.add_argument("--force", action="store_true", help="re-run even if up to date")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="runs executed at a time (default 1)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    try:
        if args.check:
            for p in args.params:
                run_parameters(p)
                print(f"ok: {p}")
            return 0
        run_many([Path(p) for p in args.params], jobs=args.jobs, force=args.force)
        if args.report:
            report(args.report, args.output, force=args.force, jobs=args.jobs)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
