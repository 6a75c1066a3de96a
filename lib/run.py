"""The command line: execute runs and reports.

    python -m lib.run params/movielens/two_tower_reference.yaml [more.yaml ...] [--force]
    python -m lib.run --report params/movielens/report.yaml [--output PATH] [--jobs 2] [--device cuda]
    python -m lib.run --check params/*/*.yaml   # validate only (run, report and tune files)
    python -m lib.run --schema movielens        # every params key: type, default, range, allowed values

A run executes notebooks 01-03 with the params file; a report executes 04, which gathers
the runs its report file lists. Every params file is validated (top-level keys against
the notebooks' ``parameters`` cells, nested keys against the study's defaults) before
anything executes. Executed notebooks go to ``build/<study>/runs/<run>/`` (git-ignored);
``--html`` also exports them to HTML there. Exit status: 0 done, 1 a run failed, 2 bad
params or usage, 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from pathlib import Path

from .core import notebooks, runner, studies
from .core.device import DEVICES, pick_device
from .core.params import ParamsError, load_yaml
from .core.runs import BUILD_ENV, is_report_file, report_runs, run_parameters

DATA_ROOT_ENV = "TWOTOWER_DATA_ROOT"  # read by the studies' loaders


def check(paths: list[str]) -> int:
    """Validate every file (a run file, a report file and every run it lists,
    ``lib.core.runs.is_report_file``, or a tune file and every trial's base run); print one
    line per file; 2 if any failed."""
    bad = 0
    for p in paths:
        try:
            raw = load_yaml(p)
            if "tune" in raw:  # a tune file (make tune): its study's tune module checks it
                importlib.import_module(f"lib.{raw.get('study', Path(p).parent.name)}.tune").tune_config(Path(p))
            elif is_report_file(p, raw):
                report_runs(p)
            else:
                run_parameters(p)
            print(f"ok: {p}")
        except ParamsError as exc:
            bad += 1
            print(f"error: {p}: {exc}", file=sys.stderr)
    if bad:
        print(f"{bad} of {len(paths)} file(s) failed the check", file=sys.stderr)
    return 2 if bad else 0


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt  # unwinds like Ctrl-C: papermill shuts the kernel down


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="*")
    ap.add_argument("--report", help="a report params file (params/<study>/report.yaml)")
    ap.add_argument("--output", help="markdown path of the report (default: the report file's)")
    ap.add_argument("--check", action="store_true", help="validate the params files only")
    ap.add_argument("--schema", metavar="STUDY", help="print the study's params schema (JSON Schema: every key, "
                                                      "its type, default, range and allowed values)")
    ap.add_argument("--force", action="store_true", help="re-run even if up to date")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="runs executed at a time (default 1)")
    ap.add_argument("--html", action="store_true", help="also export each executed notebook to HTML")
    ap.add_argument("--device", choices=DEVICES, help="run every run (and every run of the report) on this "
                    "device instead of its params' own; auto: cuda when torch sees a GPU, else cpu")
    ap.add_argument("--alongside", metavar="COMMAND", help="with --report: a shell command run while the runs "
                    "execute (the tests a report states); the report renders only once it succeeded")
    # the runner's worker processes (--jobs > 1): runs read from stdin, one kernel for all of them
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    if args.alongside and not args.report:
        ap.error("--alongside needs --report (the command runs while the report's runs execute)")
    if args.schema:
        try:
            print(json.dumps(studies.steps(args.schema).SCHEMA.model_json_schema(), indent=1))
        except ParamsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.params and not args.report and not args.worker:
        ap.error("give params files to run (or --check), or --report FILE")
    signal.signal(signal.SIGTERM, _terminate)
    for var in (BUILD_ENV, DATA_ROOT_ENV):  # kernels run in notebooks/: a relative folder means the user's
        if os.environ.get(var) and not Path(os.environ[var]).expanduser().is_absolute():
            os.environ[var] = str(Path(os.environ[var]).expanduser().resolve())
    if args.worker:
        try:
            return runner.worker(html=args.html)
        except KeyboardInterrupt:
            return 130
    try:
        notebooks.check_notebooks()
        if args.check:
            return check(args.params + ([args.report] if args.report else []))
        device = {"device": pick_device(args.device).type} if args.device else None
        items = runner.with_overrides([Path(p) for p in args.params], device)
        runner.run_many(items, jobs=args.jobs, force=args.force, html=args.html)
        if args.report:
            runner.report(args.report, args.output, force=args.force, jobs=args.jobs, html=args.html,
                          run_overrides=device, alongside=args.alongside)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except runner.RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
