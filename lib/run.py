"""The command line: execute runs and reports.

    python -m lib.run params/movielens/two_tower_reference.yaml [more.yaml ...] [--force]
    python -m lib.run --report params/movielens/report.yaml [--output PATH] [--jobs 2]
    python -m lib.run --check params/movielens/*.yaml   # validate only

A run executes notebooks 01-03 with the params file; a report executes 04, which gathers
the runs its report file lists. Every params file is validated (top-level keys against
the notebooks' ``parameters`` cells, nested keys against the study's defaults) before
anything executes. Executed notebooks go to ``build/<study>/runs/<run>/`` (git-ignored);
``--html`` also exports them to HTML there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core import notebooks, runner
from .core.params import ParamsError
from .core.runs import run_parameters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="*")
    ap.add_argument("--report", help="a report params file (params/<study>/report.yaml)")
    ap.add_argument("--output", help="markdown path of the report (default: the report file's)")
    ap.add_argument("--check", action="store_true", help="validate the params files only")
    ap.add_argument("--force", action="store_true", help="re-run even if up to date")
    ap.add_argument("--jobs", "-j", type=int, default=1, help="runs executed at a time (default 1)")
    ap.add_argument("--html", action="store_true", help="also export each executed notebook to HTML")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    try:
        notebooks.check_notebooks()
        if args.check:
            for p in args.params:
                run_parameters(p)
                print(f"ok: {p}")
            return 0
        runner.run_many([Path(p) for p in args.params], jobs=args.jobs, force=args.force, html=args.html)
        if args.report:
            runner.report(args.report, args.output, force=args.force, jobs=args.jobs, html=args.html)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
