"""The runner as a user meets it: parallel runs that fail say why, Ctrl-C stops them, and
--check checks every file."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.core import runner

ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path):
    return dict(os.environ, TWOTOWER_BUILD_DIR=str(tmp_path / "build"), PYTHONPATH=str(ROOT), MPLBACKEND="Agg")


@pytest.mark.e2e
def test_parallel_failure_names_the_cell_exception(tmp_path, capsys, monkeypatch):
    """A run that fails inside a notebook: the printed line and the error carry the
    exception type and message (here the DataError naming the missing path)."""
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / "build"))
    d = tmp_path / "movielens"
    d.mkdir()
    (d / "missing_data.yaml").write_text("data: {dataset: ml-100k, path: /nowhere/ml-100k}\nmodel: {kind: popularity}\n")
    (d / "bad_value.yaml").write_text("loss: {temperature: -1}\n")
    with pytest.raises(runner.RunFailed) as info:
        runner.run_many([d / "missing_data.yaml", d / "bad_value.yaml"], jobs=2)
    msg = str(info.value)
    assert "2 run(s) failed" in msg
    assert "DataError: data.path does not exist: /nowhere/ml-100k" in msg
    assert "loss.temperature must be > 0" in msg
    printed = capsys.readouterr().out
    assert "[missing_data] FAILED (" in printed and "DataError" in printed
    assert "Kernel is running over TCP" not in printed


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_stops_every_parallel_run(tmp_path):
    d = tmp_path / "movielens"
    d.mkdir()
    for name in ("long_a", "long_b"):  # far more epochs than the test waits for
        (d / f"{name}.yaml").write_text("data: {dataset: synthetic}\ntrain: {max_epochs: 500, patience: 500, "
                                        "batch_size: 64}\nevaluate: {bootstrap: 50}\n")
    # a terminal's foreground job: SIGINT at its default (a shell's background job, e.g. this
    # test suite started with `&`, inherits SIGINT ignored, and Python keeps ignoring it)
    proc = subprocess.Popen([sys.executable, "-m", "lib.run", str(d / "long_a.yaml"), str(d / "long_b.yaml"),
                             "--jobs", "2"], cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    from lib.core.runs import run_parameters
    runs = tmp_path / "build" / "movielens" / "runs"
    names = [run_parameters(d / f"{n}.yaml")["run"] for n in ("long_a", "long_b")]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((runs / n / "02_train.ipynb").exists() for n in names):
        time.sleep(0.5)  # both runs are training (papermill writes the notebook as it starts)
    assert all((runs / n / "02_train.ipynb").exists() for n in names), proc.stdout.read()
    workers = _children(proc.pid)
    kernels = set().union(*(_children(w) for w in workers))
    assert len(workers) == 2 and len(kernels) >= 2
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends
    rc = proc.wait(timeout=30)
    stopped = time.monotonic() - t0
    assert rc == 130 and stopped < 15, (rc, stopped, proc.stdout.read())
    time.sleep(3)  # a kernel whose manager died exits once it notices
    assert not [p for p in workers | kernels if _alive(p)]
    assert not list(tmp_path.rglob("*.tmp*")), "a half-written file was left behind"
    assert not list(runs.glob("*/metrics.json")) and not list((tmp_path / "build" / "movielens").glob("models/*/train.json"))


@pytest.mark.unit
def test_check_checks_every_file_and_fails_if_any_failed(tmp_path):
    d = tmp_path / "movielens"
    d.mkdir()
    (d / "good.yaml").write_text("model: {kind: popularity}\n")
    (d / "typo.yaml").write_text("train: {max_epoch: 3}\n")
    (d / "bad.yaml").write_text("loss: {temperature: 0}\n")
    files = [str(d / n) for n in ("typo.yaml", "good.yaml", "bad.yaml")] + [str(ROOT / "params/movielens/report.yaml")]
    proc = subprocess.run([sys.executable, "-m", "lib.run", "--check", *files], cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [f"ok: {d / 'good.yaml'}", f"ok: {ROOT / 'params/movielens/report.yaml'}"]
    assert "typo.yaml: unknown params key 'train.max_epoch'" in proc.stderr
    assert "bad.yaml: loss.temperature must be > 0" in proc.stderr
    assert "2 of 4 file(s) failed the check" in proc.stderr


@pytest.mark.unit
def test_no_arguments_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lib.run"], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "give params files" in proc.stderr


@pytest.mark.unit
def test_report_validates_every_run_then_renders_the_report_file_it_was_given(monkeypatch):
    """runner.report: every listed run is validated and executed, then notebook 04 gets
    the report file itself (not one of its runs) and no overrides."""
    from lib.core import notebooks
    ran, rendered = [], []
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: ran.extend(items))
    monkeypatch.setattr(notebooks, "execute", lambda nb, params, out_dir, log=None, html=False:
                        rendered.append((nb, params)))
    report_file = ROOT / "params/movielens/report.yaml"
    runner.report(report_file)
    # 47 run files, 4 tuned two-towers on each dataset, the 33 ML-1M two-tower variants again on ML-100K,
    # and per dataset the baselines under
    # the other protocols and seeds: 3 seeded x (3 x 3 - 1) + 4 deterministic x (3 - 1) = 32
    assert len(ran) == 47 + 4 + 4 + 33 + 2 * 32
    assert rendered == [("04_compare.ipynb", {"study": "movielens", "report_file": str(report_file.resolve()),
                                              "output": None, "run_overrides": {}})]


@pytest.mark.unit
def test_a_device_for_every_run_reaches_each_run_and_the_report(monkeypatch):
    """``make report DEVICE=...`` (runner.report with run_overrides): every run carries the
    device, merged over its own overrides, and notebook 04 gathers the runs made with it."""
    from lib.core import notebooks
    from lib.core.runs import run_parameters
    ran, plain, rendered = [], [], []
    monkeypatch.setattr(notebooks, "execute", lambda nb, params, out_dir, log=None, html=False:
                        rendered.append(params["run_overrides"]))
    report_file = ROOT / "params/movielens/report.yaml"
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: plain.extend(items))
    runner.report(report_file)
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: ran.extend(items))
    runner.report(report_file, run_overrides={"device": "auto"})
    assert len(ran) == len(plain) and rendered == [{}, {"device": "auto"}]
    for (path, ov), item in zip(ran, plain):
        own = item[1] if isinstance(item, tuple) else None
        assert ov == {**(own or {}), "device": "auto"}
        params, params_plain = run_parameters(path, ov), run_parameters(*runner._split(item))
        assert params["device"] == "auto" and params["run"] != params_plain["run"]  # another run, its own folder
        assert {k: v for k, v in params.items() if k not in ("device", "run")} == \
            {k: v for k, v in params_plain.items() if k not in ("device", "run")}


@pytest.mark.unit
def test_a_device_override_that_restates_the_files_device_is_the_same_run():
    from lib.core.runs import run_parameters
    path = ROOT / "params/movielens/baseline_popularity.yaml"
    assert run_parameters(path, {"device": "cpu"}) == run_parameters(path)
    assert run_parameters(path, {"device": "cpu", "seed": 1})["run"] == run_parameters(path, {"seed": 1})["run"]


@pytest.mark.e2e
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lib.run", "--report", "params/example/report.yaml", "--device",
                           "cuda"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "device: cuda was asked for but torch sees no CUDA GPU" in proc.stderr
    assert not (tmp_path / "build").exists()


@pytest.mark.e2e
def test_a_kernel_start_prints_no_transport_warning(tmp_path, capfd, monkeypatch):
    """Kernels talk over IPC sockets (lib.core.notebooks): ipykernel's warning about TCP
    without encryption, once printed by every kernel start, is gone; no socket folder stays."""
    import tempfile
    from lib.core import notebooks
    from lib.core.runs import run_from_file
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / "build"))
    f = tmp_path / "movielens" / "tiny.yaml"
    f.parent.mkdir()
    f.write_text("data: {dataset: synthetic}\nmodel: {kind: popularity}\n")
    from lib.core.runs import run_parameters
    sockets = tmp_path / "tmp"  # where the kernel's socket folder goes (other tests may run beside this one)
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))
    notebooks.execute("01_data_prep.ipynb", run_parameters(f), tmp_path / "out")
    out, err = capfd.readouterr()
    assert (tmp_path / "out" / "01_data_prep.ipynb").is_file() and run_from_file(f).data_dir.is_dir()
    assert "running over TCP" not in out + err
    assert not list(sockets.iterdir())  # the kernel's socket folder is removed with it


@pytest.mark.unit
def test_progress_gives_the_count_and_the_time_left_at_the_pace_so_far():
    assert runner.progress(1, 4, 20.0) == "1/4, about 60 s left" and runner.progress(2, 4, 200.0) == "2/4, about 3 min left"
    assert runner.progress(4, 4, 500.0) == "4/4" and runner.progress(3, 4, 3.0) == "3/4, about 1 s left"
    # paced on the expected cost finished: one long run of 300 done in 60 s, 100 of cost left
    assert runner.progress(1, 4, 60.0, cost_done=300.0, cost_total=400.0) == "1/4, about 20 s left"
    assert runner.progress(1, 4, 60.0, cost_done=0.0, cost_total=400.0) == "1/4, about 3 min left"  # per run


@pytest.mark.unit
def test_a_command_run_alongside_the_runs_gates_the_render_and_stops_with_them(tmp_path, monkeypatch, capsys):
    """report(alongside=...): the command runs while the runs execute; the report renders
    only after it succeeded; a failed command is named with its log and nothing renders; if
    the runs fail, the command is stopped (its whole process group) and nothing renders."""
    from lib.core import notebooks
    rendered, started = [], []
    monkeypatch.setattr(notebooks, "execute", lambda nb, params, out_dir, log=None, html=False: rendered.append(nb))
    real_start = runner.start_alongside
    monkeypatch.setattr(runner, "start_alongside", lambda cmd, log: started.append(real_start(cmd, log)) or started[-1])
    report_file = ROOT / "params/movielens/report.yaml"
    flag = tmp_path / "ran"
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: None)
    runner.report(report_file, alongside=f"sleep 0.5 && touch {flag}")
    assert flag.is_file() and rendered == ["04_compare.ipynb"] and started[-1].returncode == 0
    # a command that ended while the runs went on: its time is until its last output, not until the runs ended
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: time.sleep(3))
    runner.report(report_file, alongside="sleep 0.6; echo done")
    last = capsys.readouterr().out.splitlines()[-1]
    took = re.fullmatch(r"the command run alongside the runs had ended before the runs, (\d+) s after its start "
                        r"\(its last output\)", last)
    assert took and 0 < int(took[1]) < 3, last
    monkeypatch.setattr(runner, "run_many", lambda items, **kw: None)
    rendered.clear()
    with pytest.raises(runner.RunFailed, match=r"the command run alongside the runs failed \(exit status 3; it "
                                                r"(had )?ended (before the runs, )?\d+ s after its start( \(its last "
                                                r"output\))?\): echo broken; exit 3; its output is in .*alongside.log"):
        runner.report(report_file, alongside="echo broken; exit 3")
    assert rendered == [] and started[-1].log.read_text() == "broken\n"

    def failing_runs(items, **kw):
        raise runner.RunFailed("1 run(s) failed: x")
    monkeypatch.setattr(runner, "run_many", failing_runs)
    t0 = time.monotonic()
    with pytest.raises(runner.RunFailed, match="1 run.s. failed"):
        runner.report(report_file, alongside="sleep 60 & sleep 60; wait")
    assert started[-1].returncode == -signal.SIGTERM and time.monotonic() - t0 < 15 and rendered == []


@pytest.mark.unit
def test_runs_in_parallel_start_the_most_expensive_first_by_their_studys_estimate():
    """The order comes from each study's ``report.expected_cost`` of the resolved params
    (the core reads no study's keys): MovieLens' mixed-loss interaction batches before user
    batches before a baseline, ML-100K after ML-1M; the sequence study's full-size runs before
    its capped ones."""
    ml = ROOT / "params" / "movielens"
    ref, u11, pop = ml / "two_tower_reference.yaml", ml / "tt_u11_half_life_7d.yaml", ml / "baseline_popularity.yaml"
    on_100k = {"data": {"dataset": "ml-100k"}}
    costs = {name: runner.expected_cost(item) for name, item in
             [("ref", ref), ("u11", u11), ("pop", pop), ("ref-100k", (ref, on_100k)), ("u11-seed1", (u11, {"seed": 1}))]}
    assert costs["ref"] > costs["u11"] > costs["pop"] > 0
    # u11's towers on interaction batches (the loss sweep) cost more than on user batches, and than the reference
    assert runner.expected_cost(ml / "tt_f2_interactions_inbatch_logq.yaml") > costs["ref"]
    assert costs["ref-100k"] < costs["ref"] and costs["u11-seed1"] == costs["u11"]
    ws = ROOT / "params" / "wikiseq"
    full, capped = ws / "all_updates.yaml", (ws / "all_updates.yaml", {"data": {"pair_cap": 160}})
    assert runner.expected_cost(full) > runner.expected_cost(ws / "v1_updates.yaml") > runner.expected_cost(capped)
    items = [pop, u11, (ref, on_100k), ref]
    ranked = runner.longest_first(items, [runner.expected_cost(item) for item in items])
    assert [item for item, _ in ranked] == [ref, (ref, on_100k), u11, pop]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_shared_kernel_gives_each_run_the_metrics_of_a_fresh_kernel(tmp_path, monkeypatch):
    """Runs share one kernel (notebooks.KernelSession): a run executed after another in the
    same kernel has exactly the metrics it has in a kernel of its own, and a notebook sees
    nothing its predecessor defined; the kernel started once for six notebooks."""
    import json
    from jupyter_core.utils import run_sync
    from lib.core import notebooks
    d = tmp_path / "movielens"
    d.mkdir()
    (d / "first.yaml").write_text("data: {dataset: synthetic}\ntrain: {max_epochs: 2, batch_size: 128}\n"
                                  "evaluate: {bootstrap: 50}\nseed: 5\n")
    (d / "second.yaml").write_text("data: {dataset: synthetic}\nmodel: {history: recency, id_embeddings: true}\n"
                                   "loss: {kind: full_softmax}\ntrain: {max_epochs: 2, batch_size: 128}\n"
                                   "evaluate: {bootstrap: 50}\nseed: 1\n")
    metrics = {}
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / "shared"))
    with notebooks.KernelSession() as session:
        for name in ("first", "second"):
            run_dir = runner.run_one(d / f"{name}.yaml", quiet=True, session=session)
            metrics[name, "shared"] = json.loads((run_dir / "metrics.json").read_text())["splits"]
        assert session.starts == 1
        kc = session.kernel().client()  # reset, as before the next notebook
        kc.start_channels()
        try:
            reply = run_sync(kc.execute_interactive)("assert 'run' not in globals() and 'pipeline' not in globals()",
                                                     timeout=60)
        finally:
            kc.stop_channels()
        assert reply["content"]["status"] == "ok", reply["content"]
        assert reply["content"]["execution_count"] == 1  # a fresh count, as in a new kernel
    monkeypatch.setenv("TWOTOWER_BUILD_DIR", str(tmp_path / "alone"))
    run_dir = runner.run_one(d / "second.yaml", quiet=True)  # a kernel of its own
    alone = json.loads((run_dir / "metrics.json").read_text())["splits"]

    def figures(splits):  # every figure but the timings (ranking seconds, latency)
        return {split: {k: v for k, v in m.items() if not k.endswith("seconds") and "latency" not in k}
                for split, m in splits.items()}
    assert figures(alone) == figures(metrics["second", "shared"])
    assert alone["test"]["metrics"]["ndcg@10"] > 0


@pytest.mark.unit
def test_a_worker_that_dies_fails_its_run_with_its_last_words(tmp_path, monkeypatch, capsys):
    """A worker process that exits (killed, out of memory) without answering: its run is
    reported failed with the worker's exit status and the last line it printed."""
    import subprocess as sp
    import tempfile

    def dying_worker(html):
        other = tempfile.TemporaryFile(mode="w+")
        proc = sp.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                         "print('MemoryError: out of memory', file=sys.stderr); sys.exit(3)"],
                        stdin=sp.PIPE, stdout=sp.PIPE, stderr=other, text=True)
        proc.other_output = other
        return proc
    monkeypatch.setattr(runner, "_spawn_worker", dying_worker)
    d = tmp_path / "movielens"
    d.mkdir()
    for name in ("a", "b"):
        (d / f"{name}.yaml").write_text("model: {kind: popularity}\n")
    with pytest.raises(runner.RunFailed) as info:
        runner.run_many([d / "a.yaml", d / "b.yaml"], jobs=2)
    assert str(info.value).splitlines()[0] in ("2 run(s) failed: a, b", "2 run(s) failed: b, a")
    assert str(info.value).count("its worker process exited with status 3: MemoryError: out of memory") == 2
    assert "[a] FAILED (" in capsys.readouterr().out


@pytest.mark.unit
def test_a_run_is_named_alike_in_every_clone(tmp_path, monkeypatch):
    """A params file in a subfolder of the repository is named by its path in the
    repository, not where the clone lies (a report quotes run names); one outside it by its
    absolute path; two files of one name in different folders get different names."""
    import hashlib
    import shutil

    from lib.core import runs
    rel = "params/movielens/tuning/ml-1m_ease.yaml"
    here = runs.run_name(ROOT / rel, "movielens")
    assert here == "ml-1m_ease-" + hashlib.sha256(rel.encode()).hexdigest()[:6]
    clone = tmp_path / "elsewhere"
    (clone / "params/movielens/tuning").mkdir(parents=True)
    shutil.copy(ROOT / rel, clone / rel)
    monkeypatch.setattr(runs, "ROOT", clone)
    assert runs.run_name(clone / rel, "movielens") == here
    monkeypatch.setattr(runs, "ROOT", ROOT)
    outside = runs.run_name(clone / rel, "movielens")
    assert outside != here and outside == "ml-1m_ease-" + hashlib.sha256(str(clone / rel).encode()).hexdigest()[:6]
    assert runs.run_name(ROOT / "params/movielens/baseline_ease.yaml", "movielens") == "baseline_ease"
