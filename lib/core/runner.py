"""Execute runs (notebooks 01-03) and reports (04) with papermill, one or several at a time.

Every params file is validated before anything executes. A run whose metrics are up to
date for its params and code is skipped. With ``jobs > 1`` each run executes in its own
process (``python -m lib.run FILE --log-to-run-dir``): its notebook output goes to
``build/<study>/runs/<run>/run.log``, a line is printed as each run ends, every run is
attempted, a failure names the run and the failing cell's exception, and nothing
downstream (the report) renders. Ctrl-C stops every run within seconds; cache entries are
written atomically, so an interrupted run leaves none half-written.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import notebooks
from .params import load_yaml
from .runs import ROOT, build_root, configure, report_runs, run_parameters

class RunFailed(RuntimeError):
    """A run's notebook raised: names the run, the exception and where its log is."""


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
        forget(run)
    t0 = time.perf_counter()
    import papermill
    with open(run_dir / "run.log", "w") if quiet else contextlib.nullcontext() as log:
        for nb in notebooks.RUN_NOTEBOOKS:
            if not quiet:
                print(f"[{name}] executing {nb}", flush=True)
            try:
                notebooks.execute(nb, params, run_dir, log, html=html)
            except papermill.PapermillExecutionError as exc:
                where = f"; its output is in {run_dir / 'run.log'}" if quiet else ""
                raise RunFailed(f"{nb}, cell {exc.exec_count}: {exc.ename}: {exc.evalue}{where}") from None
    print(f"[{name}] done in {time.perf_counter() - t0:.0f}s", flush=True)
    return run_dir


def forget(run) -> None:
    """Remove a run's cached entries: its metrics, its trained model and its prepared data
    (each under its lock; runs sharing the data rebuild it, their models stay valid), so
    that the next execution rebuilds everything it needs (``--force``)."""
    import shutil
    from .files import file_lock
    for folder in (run.data_dir, run.model_dir):
        with file_lock(folder):
            shutil.rmtree(folder, ignore_errors=True)
    (run.dir / "metrics.json").unlink(missing_ok=True)


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


def progress(done: int, total: int, elapsed: float) -> str:
    """``done/total`` and, while runs are left, the time left at the pace so far (runs are
    started most expensive first, so the estimate errs long)."""
    if done >= total or done == 0:
        return f"{done}/{total}"
    left = elapsed / done * (total - done)
    return f"{done}/{total}, about {left / 60:.0f} min left" if left >= 90 else f"{done}/{total}, about {left:.0f} s left"


def run_many(items: list, jobs: int = 1, force: bool = False, html: bool = False) -> None:
    """Run several params files (or ``(file, overrides)`` pairs), ``jobs`` at a time (each
    run's torch uses its own ``train.threads``; the default 1 fits one run per core)."""
    start = time.monotonic()
    if jobs <= 1 or len(items) <= 1:
        for done, item in enumerate(items, 1):
            p, ov = _split(item)
            run_one(p, force=force, overrides=ov, html=html)
            if len(items) > 1:
                print(f"({progress(done, len(items), time.monotonic() - start)})", flush=True)
        return
    order = sorted(items, key=expected_cost, reverse=True)
    print(f"running {len(order)} runs, {jobs} at a time; each run's notebook output is in "
          f"{build_root()}/<study>/runs/<run>/run.log", flush=True)
    pending, running, failed, done = list(order), {}, [], 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                item = pending.pop(0)
                running[_spawn(item, force, html)] = item
            finished = [proc for proc in running if proc.poll() is not None]
            if not finished:
                time.sleep(0.2)
                continue
            for proc in finished:
                path, _ = _split(running.pop(proc))
                done += 1
                lines = _output(proc)
                if proc.returncode == 0:
                    last = lines[-1] if lines else f"[{Path(path).stem}] done"
                    print(f"{last} ({progress(done, len(order), time.monotonic() - start)})", flush=True)
                else:
                    reason = next((ln for ln in reversed(lines) if ln.startswith("error:")), None)
                    reason = reason or (lines[-1] if lines else f"exit status {proc.returncode}")
                    failed.append((path, reason))
                    print(f"[{Path(path).stem}] FAILED ({done}/{len(order)}): {reason}", flush=True)
    except KeyboardInterrupt:
        _stop(running)
        raise
    if failed:
        names = ", ".join(Path(p).stem for p, _ in failed)
        raise RunFailed(f"{len(failed)} run(s) failed: {names}\n" + "\n".join(f"  {Path(p).stem}: {r}" for p, r in failed))


def _spawn(item, force: bool, html: bool) -> subprocess.Popen:
    """One run in its own process (and process group, so that Ctrl-C reaches only us and we
    stop it), its output in a temporary file."""
    path, overrides = _split(item)
    cmd = [sys.executable, "-m", "lib.run", str(Path(path).resolve()), "--log-to-run-dir"]
    if overrides:
        cmd += ["--overrides", json.dumps(overrides)]
    cmd += ["--force"] * force + ["--html"] * html
    out = tempfile.TemporaryFile(mode="w+")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # in the user's folder (relative paths in params mean it), lib importable from ROOT
    proc = subprocess.Popen(cmd, cwd=os.getcwd(), stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    proc.output_file = out
    return proc


def _output(proc: subprocess.Popen) -> list[str]:
    out = proc.output_file
    out.seek(0)
    lines = [ln.rstrip() for ln in out.read().splitlines()]
    out.close()
    return [ln for ln in lines if ln]


def _stop(running: dict, grace: float = 10.0) -> None:
    """Stop every running run: SIGTERM (the run shuts its kernel down), then SIGKILL."""
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"interrupted: stopped {len(running)} running run(s); completed runs stay cached", flush=True)


def report(path: str | Path, output: str | None = None, force: bool = False, jobs: int = 1,
           html: bool = False) -> None:
    """Execute every run a report file lists (validated first), then notebook 04."""
    path = Path(path)
    study, _, run_items = report_runs(path)
    notebooks.check_notebooks()
    run_many(run_items, jobs=jobs, force=force, html=html)
    params = {"study": study, "report_file": str(path.resolve()), "output": output, "run_overrides": {}}
    notebooks.execute(notebooks.REPORT_NOTEBOOK, params, build_root() / study / "report", html=html)
