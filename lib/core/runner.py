"""Execute runs (notebooks 01-03) and reports (04) with papermill, one or several at a time.

Every params file is validated before anything executes. A run whose metrics are up to
date for its params and code is skipped. The notebooks of a sequence of runs execute in one
kernel (``notebooks.KernelSession``: a kernel start and its imports cost more than a small
run). With ``jobs > 1``, ``jobs`` worker processes (``python -m lib.run --worker``) each keep
one kernel and take the next run as they finish one, the most expensive first: a run's
notebook output goes to ``build/<study>/runs/<run>/run.log``, a line is printed as each run
ends, every run is attempted, a failure names the run and the failing cell's exception, and
nothing downstream (the report) renders. Ctrl-C stops every run within seconds; cache
entries are written atomically, so an interrupted run leaves none half-written.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import notebooks, studies
from .params import ParamsError, deep_merge
from .runs import ROOT, build_root, configure, report_runs, run_parameters

class RunFailed(RuntimeError):
    """A run's notebook raised: names the run, the exception and where its log is."""


def run_one(path: str | Path, force: bool = False, overrides: dict | None = None,
            quiet: bool = False, html: bool = False, session: notebooks.KernelSession | None = None) -> Path:
    """Execute notebooks 01-03 for one params file, unless its results are up to date.
    ``quiet``: the notebooks' output goes to ``<run dir>/run.log`` only (parallel runs);
    ``html``: also export each executed notebook to HTML; ``session``: the kernel to run
    them in (default: one for this run, shut down at its end)."""
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
    own = session is None
    session = notebooks.KernelSession() if own else session
    with (open(run_dir / "run.log", "w") if quiet else contextlib.nullcontext() as log,
          session if own else contextlib.nullcontext()):
        for nb in notebooks.RUN_NOTEBOOKS:
            if not quiet:
                print(f"[{name}] executing {nb}", flush=True)
            try:
                notebooks.execute(nb, params, run_dir, log, html=html, session=session)
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


def with_overrides(items: list, overrides: dict | None) -> list:
    """``items`` (params files or ``(file, overrides)`` pairs) with ``overrides`` merged over
    each one's own (e.g. ``{"device": "cuda"}``: every run of a report on the GPU)."""
    if not overrides:
        return list(items)
    return [(p, deep_merge(ov or {}, overrides)) for p, ov in map(_split, items)]


def expected_cost(item) -> float:
    """A run's rough cost relative to the other runs: its study's ``report.expected_cost`` of
    its resolved params (1 when the study gives none). Runs executed in parallel start the
    most expensive first, and the time left is estimated from it (``progress``). A params
    file that does not validate costs 0: it fails when it executes, as that run's failure."""
    path, overrides = _split(item)
    try:
        run = configure(**run_parameters(path, overrides))
    except ParamsError:
        return 0.0
    estimate = getattr(studies.report(run.study), "expected_cost", None)
    return float(estimate(run.cfg)) if estimate is not None else 1.0


def longest_first(items: list, costs: list[float]) -> list[tuple]:
    """``(item, cost)`` pairs, the most expensive first (equal costs keep their order)."""
    return sorted(zip(items, costs), key=lambda pair: pair[1], reverse=True)


def progress(done: int, total: int, elapsed: float, cost_done: float | None = None,
             cost_total: float | None = None) -> str:
    """``done/total`` and, while runs are left, the time left: the seconds so far per unit of
    the expected cost of the runs finished (``cost_done`` of ``cost_total``; without them,
    per run) times the cost left. Rough: as good as the costs, and runs still executing are
    counted as not started."""
    if done >= total or done == 0:
        return f"{done}/{total}"
    if cost_done is None or cost_total is None or cost_done <= 0:
        cost_done, cost_total = done, total
    left = elapsed / cost_done * max(cost_total - cost_done, 0.0)
    return f"{done}/{total}, about {left / 60:.0f} min left" if left >= 90 else f"{done}/{total}, about {left:.0f} s left"


def run_many(items: list, jobs: int = 1, force: bool = False, html: bool = False) -> None:
    """Run several params files (or ``(file, overrides)`` pairs), ``jobs`` at a time (each
    run's torch uses its own ``train.threads``; the default 1 fits one run per core)."""
    start = time.monotonic()
    costs = [expected_cost(item) for item in items] if len(items) > 1 else [1.0] * len(items)
    total_cost, cost_done = sum(costs), 0.0
    if jobs <= 1 or len(items) <= 1:
        with notebooks.KernelSession() as session:
            for done, (item, cost) in enumerate(zip(items, costs), 1):
                p, ov = _split(item)
                run_one(p, force=force, overrides=ov, html=html, session=session)
                cost_done += cost
                if len(items) > 1:
                    print(f"({progress(done, len(items), time.monotonic() - start, cost_done, total_cost)})",
                          flush=True)
        return
    ranked = longest_first(items, costs)
    order, cost_of = [item for item, _ in ranked], {id(item): cost for item, cost in ranked}
    jobs = min(jobs, len(order))
    print(f"running {len(order)} runs, {jobs} at a time; each run's notebook output is in "
          f"{build_root()}/<study>/runs/<run>/run.log", flush=True)
    pending, failed, done = list(order), [], 0
    workers: dict[subprocess.Popen, object] = {}  # worker -> the run it executes (None: idle)
    sel = selectors.DefaultSelector()
    try:
        while pending or any(item is not None for item in workers.values()):
            for proc in [p for p, item in workers.items() if item is None]:
                if not pending:
                    break
                workers[proc] = pending.pop(0)
                _send(proc, workers[proc], force)
            while pending and len(workers) < jobs:
                proc = _spawn_worker(html)
                sel.register(proc.stdout, selectors.EVENT_READ, proc)
                workers[proc] = pending.pop(0)
                _send(proc, workers[proc], force)
            for key, _ in sel.select(timeout=0.5):
                proc = key.data
                line = proc.stdout.readline()
                item = workers[proc]
                if not line:  # the worker died (killed, out of memory): its run failed, the others go on
                    sel.unregister(proc.stdout)
                    proc.wait()
                    del workers[proc]
                    if item is None:
                        continue
                    reply = {"ok": False, "error": f"its worker process exited with status {proc.returncode}"
                                                   + _last_line(proc.other_output)}
                else:
                    reply = json.loads(line)
                    workers[proc] = None
                path, _ = _split(item)
                done += 1
                cost_done += cost_of[id(item)]
                if reply["ok"]:
                    last = reply["lines"][-1] if reply.get("lines") else f"[{Path(path).stem}] done"
                    eta = progress(done, len(order), time.monotonic() - start, cost_done, total_cost)
                    print(f"{last} ({eta})", flush=True)
                else:
                    failed.append((path, reply["error"]))
                    print(f"[{Path(path).stem}] FAILED ({done}/{len(order)}): {reply['error']}", flush=True)
    except KeyboardInterrupt:
        _stop(workers)
        raise
    finally:
        for proc in list(workers):
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # end of input: the worker shuts its kernel down and exits
        for proc in list(workers):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        sel.close()
    if failed:
        names = ", ".join(Path(p).stem for p, _ in failed)
        raise RunFailed(f"{len(failed)} run(s) failed: {names}\n" + "\n".join(f"  {Path(p).stem}: {r}" for p, r in failed))


def _spawn_worker(html: bool) -> subprocess.Popen:
    """A worker process (in its own process group, so that Ctrl-C reaches only us and we stop
    it): it reads one run per line on stdin and answers one JSON line per run on stdout;
    everything else it prints goes to a temporary file."""
    cmd = [sys.executable, "-m", "lib.run", "--worker"] + ["--html"] * html
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # in the user's folder (relative paths in params mean it), lib importable from ROOT
    other = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, cwd=os.getcwd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=other,
                            text=True, env=env, start_new_session=True)
    proc.other_output = other
    return proc


def _last_line(output) -> str:
    """``: <the last line>`` of a worker's other output (a temporary file), or nothing."""
    output.seek(0)
    lines = [ln.strip() for ln in output.read().splitlines() if ln.strip()]
    return f": {lines[-1]}" if lines else ""


def _send(proc: subprocess.Popen, item, force: bool) -> None:
    path, overrides = _split(item)
    proc.stdin.write(json.dumps({"path": str(Path(path).resolve()), "overrides": overrides, "force": force}) + "\n")
    proc.stdin.flush()


def worker(html: bool = False) -> int:
    """The loop of ``python -m lib.run --worker``: runs read from stdin (one JSON object a
    line: path, overrides, force), executed in one kernel session, each answered with one
    JSON line on stdout: ``{"ok": true, "lines": [what the run printed]}`` or ``{"ok":
    false, "error": ...}``. Ends, shutting its kernel down, at the end of stdin."""
    replies = sys.stdout
    sys.stdout = sys.stderr  # anything else printed must not be read as a reply
    with notebooks.KernelSession() as session:
        for line in sys.stdin:
            job = json.loads(line)
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    run_one(Path(job["path"]), force=job["force"], overrides=job["overrides"], quiet=True,
                            html=html, session=session)
                reply = {"ok": True, "lines": [ln for ln in printed.getvalue().splitlines() if ln.strip()]}
            except (ParamsError, RunFailed) as exc:
                reply = {"ok": False, "error": f"error: {exc}"}
            except Exception as exc:  # noqa: BLE001 - reported as this run's failure; the worker goes on
                reply = {"ok": False, "error": f"error: {type(exc).__name__}: {exc}"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
    return 0


def _stop(running: dict, grace: float = 10.0) -> None:
    """Stop every worker: SIGTERM (it shuts its kernel down), then SIGKILL."""
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
    print(f"interrupted: stopped {len(running)} worker(s); completed runs stay cached", flush=True)


def start_alongside(command: str, log: Path) -> subprocess.Popen:
    """A shell command run while the runs execute (``report(alongside=...)``: the tests a
    report states use the core a pytest process leaves idle), in its own process group, its
    output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"running alongside the runs: {command} (output: {log})", flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(command, shell=True, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd(),
                                start_new_session=True)
    proc.command, proc.log, proc.started = command, log, time.time()
    return proc


def finish_alongside(proc: subprocess.Popen) -> None:
    """Wait for the command run alongside; raises ``RunFailed`` (naming it and its log) if it failed.
    Its time: until now if it was still running, else until its last output (the log's last
    write: nothing polled it while the runs went on)."""
    ended_before = proc.poll() is not None
    if not ended_before:
        print(f"waiting for the command run alongside the runs: {proc.command}", flush=True)
    status = proc.wait()
    if ended_before:
        seconds = max(proc.log.stat().st_mtime - proc.started, 0.0)
        took = f"had ended before the runs, {seconds:.0f} s after its start (its last output)"
    else:
        seconds = time.time() - proc.started
        took = f"ended {seconds:.0f} s after its start"
    if status != 0:
        raise RunFailed(f"the command run alongside the runs failed (exit status {status}; it {took}): "
                        f"{proc.command}; its output is in {proc.log}; nothing was rendered")
    print(f"the command run alongside the runs {took}", flush=True)


def stop_alongside(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the command run alongside (its whole process group): SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(f"stopped the command run alongside the runs: {proc.command}", flush=True)


def report(path: str | Path, output: str | None = None, force: bool = False, jobs: int = 1,
           html: bool = False, run_overrides: dict | None = None, alongside: str | None = None) -> None:
    """Execute every run a report file lists (validated first), then notebook 04.
    ``run_overrides`` (e.g. ``{"device": "cuda"}``) apply to every run, and the report
    gathers the runs made with them. ``alongside``: a shell command started with the runs
    (``make report-movielens``: the tests the report states); the report renders only once
    it succeeded, and it is stopped with the runs if they fail or are interrupted."""
    path = Path(path)
    study, _, run_items = report_runs(path)  # every run validated
    if run_overrides:
        run_items = with_overrides(run_items, run_overrides)
        for item in run_items:
            run_parameters(*_split(item))  # and again with the overrides, before any executes
    notebooks.check_notebooks()
    companion = start_alongside(alongside, build_root() / study / "report" / "alongside.log") if alongside else None
    try:
        run_many(run_items, jobs=jobs, force=force, html=html)
    except BaseException:
        if companion is not None:
            stop_alongside(companion)
        raise
    if companion is not None:
        finish_alongside(companion)
    params = {"study": study, "report_file": str(path.resolve()), "output": output,
              "run_overrides": run_overrides or {}}
    notebooks.execute(notebooks.REPORT_NOTEBOOK, params, build_root() / study / "report", html=html)
