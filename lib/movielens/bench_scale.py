"""Benchmark the study at MovieLens-20M size, on a generated log: wall time and peak memory per step.

    python -m lib.movielens.bench_scale [--scale 1.0] [--device cpu|cuda] [--max-epochs 10] [--threads N]
                                        [--two-tower PARAMS] [--keep DIR] [--json PATH] [--models a,b,...]
                                        [--tracemalloc]

Data. ``lib.movielens.interactions.write_synthetic_log`` (seed 0) writes a log shaped like
MovieLens-20M: at ``--scale 1.0`` 20,000,000 interactions, 138,000 users, 27,000 items,
timestamps over 5 years, ratings 1-5, as Parquet. ``--scale s`` multiplies the interactions
and the users by s and the items by sqrt(s) (at least 200): a smaller catalog with fewer
users, each user about as active as at full size. The log goes into a temporary folder,
removed at the end, or into ``--keep DIR``, where a log of the same size (same generator
arguments, same bytes on disk) is reused. It is written by a child process, timed apart:
it is the benchmark's fixture, not a step of the study.

Steps, in one process and in the study's order, each timed (wall seconds) with its peak
RSS: load + split (``build_prepared``, the reference protocol: 5-core, global time split
80/10/10), then for each model its fit and its evaluation on test (``evaluate_split``:
top-100 over the whole catalog with training items excluded, every metric, bootstrap CIs
with 1000 resamples). One setting per model, no grid search (the study chooses baseline
hyperparameters on validation; this measures the cost of one fit):

- popularity; recent popularity over the last 30 days of training;
- ItemKNN, k = 100 (cosine, no shrinkage);
- iALS, 64 factors, regularisation 1.0, alpha 2.0 (the study's), 15 iterations, 1 thread;
- EASE, l2 = 0.5 x the mean diagonal of X^T X (the mean training count of an item);
- the two-tower, ``params/movielens/tt_l64t_linear_dim64_temperature005.yaml`` (``--two-tower``
  for another params file): the linear history tower, 64-d (mean of the history items'
  embeddings . item embedding + item bias), user-batched full softmax at temperature 0.05,
  early stopping on validation NDCG@10 with patience 3, at most 40 epochs; its per-epoch
  validation is part of its time. Why this one and not the best ML-1M tower (u11, an MLP
  over IDs + recency history): on this generated log, which has no item features, u11 and
  the linear tower at temperature 1 stay on a plateau near popularity (at ``--scale 0.1``,
  validation NDCG@10 0.023 after 4 epochs, ItemKNN 0.161), while this one reaches 0.18 in
  4 epochs; validation would choose it, and a benchmark of a model that learns nothing
  would time the wrong thing (to see it: ``--scale 0.1 --models itemknn,two_tower
  --two-tower params/movielens/tt_u11_half_life_7d.yaml``, then without ``--two-tower``).
  ``--max-epochs N`` caps the epochs (default 10; 0: the params' own); the seconds per
  epoch and, when capped, the projected uncapped run are printed, between patience + 1
  epochs (the fewest early stopping allows) and 40.

Memory. A background thread samples ``VmRSS`` of ``/proc/self/status`` every 20 ms, reset
at each step; a step that raises the process high-water mark (``VmHWM``) gets that exact
value. The process peak is ``resource.getrusage``'s ``ru_maxrss``. GB here is 10^9 bytes.
``--tracemalloc`` also traces Python allocations (numpy's arrays included, torch's not)
and prints each step's traced peak next to the size of a dense users x items float32
array (the check that no step allocates one: slower, for small scales).

Threads. The benchmark is one study alone on the machine, so torch and FAISS use every CPU
(``--threads``, default ``os.cpu_count()``; a run of ``make report`` uses one thread per
run because it runs one per core); iALS stays on one thread, as in the study.

``evaluate_split`` checks, for embedding models (iALS, two-tower), that FAISS equals exact
brute force; that check works through the users in batches since 227d71d (before, found
by this benchmark, it held ~24 GB of dense evaluated users x items arrays at full size), and
takes each user's exact top-k scores by partial selection since bd192bc (its full argsort of
every row took 79 s of an embedding model's ~90 s evaluation at full size).

Targets (issue "scale"), stated for ``--scale 1.0`` and printed PASS/MISS: load + split
<= 60 s; the whole benchmark (load to the last evaluation) <= 30 min; peak RSS <= 12 GB;
the two-tower on cuda <= 2 min (checked only with ``--device cuda``). Verdicts are on what
was measured (a capped two-tower: its projection is printed beside them). The load average
at start and end is printed with the figures: on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FULL = {"n_interactions": 20_000_000, "n_users": 138_000, "n_items": 27_000}
YEARS = 5.0
SEED = 0
GB = 1e9
TWO_TOWER_PARAMS = "params/movielens/tt_l64t_linear_dim64_temperature005.yaml"
MODELS = ("popularity", "recent_popularity", "itemknn", "ials", "ease", "two_tower")
SETTINGS = {  # one setting per baseline, no grid search (EASE's l2: see ease_l2)
    "popularity": {},
    "recent_popularity": {"window_days": 30.0},
    "itemknn": {"k": 100},
    "ials": {"factors": 64, "regularization": 1.0, "alpha": 2.0, "iterations": 15, "seed": 0},
    "ease": {},
}
TARGETS = {"load_split_s": 60.0, "total_s": 30 * 60.0, "peak_rss_gb": 12.0, "two_tower_cuda_s": 120.0}
SAMPLE_S = 0.02


def sizes_for(scale: float) -> dict:
    """Generator sizes at ``scale``: interactions and users x scale, items x sqrt(scale), >= 200."""
    if not scale > 0:
        raise ValueError(f"--scale must be > 0, got {scale}")
    return {"n_interactions": max(1, round(FULL["n_interactions"] * scale)),
            "n_users": max(1, round(FULL["n_users"] * scale)),
            "n_items": max(200, round(FULL["n_items"] * math.sqrt(scale)))}


def ease_l2(train_matrix) -> float:
    """0.5 x the mean diagonal of X^T X, i.e. half the mean training count of an item."""
    return 0.5 * float(train_matrix.nnz) / train_matrix.shape[1]


# -- memory ------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def process_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB


class RSSSampler:
    """A daemon thread that keeps the largest ``VmRSS`` seen since the last ``reset``."""

    def __init__(self, interval: float = SAMPLE_S):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a sample is wholly before or after a reset, never carried over it
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> int:
        with self._lock:
            self.peak = rss_bytes()
            return self.peak


# -- the log -------------------------------------------------------------------------------------
_GENERATE = ("import json, sys; from lib.movielens.interactions import write_synthetic_log; "
             "write_synthetic_log(**json.loads(sys.argv[1]))")


def log_path(folder: Path, sizes: dict) -> Path:
    return Path(folder) / "log_{n_interactions}x{n_users}u{n_items}i.parquet".format(**sizes)


def ensure_log(folder: Path, sizes: dict) -> tuple[Path, dict]:
    """The generated log in ``folder`` (reused when its sidecar records the same generator
    arguments and byte count), and how it was obtained (seconds, child peak RSS)."""
    path = log_path(folder, sizes)
    meta_path = path.with_suffix(".json")
    args = {**sizes, "seed": SEED, "years": YEARS, "path": str(path)}
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("args") == args and meta.get("bytes") == path.stat().st_size:
            return path, {"reused": True, "seconds": meta.get("seconds"), "peak_rss_gb": meta.get("peak_rss_gb")}
    Path(folder).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", _GENERATE, json.dumps(args)], check=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GB  # the largest child so far
    meta_path.write_text(json.dumps({"generator": "lib.movielens.interactions.write_synthetic_log", "args": args,
                                     "bytes": path.stat().st_size, "seconds": seconds, "peak_rss_gb": peak}, indent=1))
    return path, {"reused": False, "seconds": seconds, "peak_rss_gb": peak}


# -- the study, step by step ---------------------------------------------------------------------------
class Steps:
    """Runs named steps, recording wall seconds, peak RSS (and the traced peak)."""

    def __init__(self, sampler: RSSSampler, trace: bool, say=print):
        self.sampler, self.trace, self.say, self.rows = sampler, trace, say, []

    def run(self, name: str, fn):
        gc.collect()
        start = self.sampler.reset()
        hwm0 = hwm_bytes()
        traced0 = 0
        if self.trace:
            tracemalloc.reset_peak()
            traced0 = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        peak = max(self.sampler.peak, rss_bytes())
        hwm1 = hwm_bytes()
        if hwm1 > hwm0:  # a new process high-water mark was set during this step: it is exact
            peak = max(peak, hwm1)
        row = {"step": name, "seconds": seconds, "peak_rss_gb": peak / GB, "start_rss_gb": start / GB}
        if self.trace:
            row["traced_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
            row["traced_start_mb"] = traced0 / 1e6
        self.rows.append(row)
        extra = f"  traced peak {row['traced_peak_mb']:9.1f} MB" if self.trace else ""
        self.say(f"  {name:<50} {seconds:9.1f} s  peak RSS {peak / GB:6.2f} GB{extra}", flush=True)
        return out


def two_tower_sections(max_epochs: int | None, params: str = TWO_TOWER_PARAMS) -> dict:
    from ..core.params import load_yaml
    raw = load_yaml(ROOT / params)
    sections = {k: dict(raw.get(k) or {}) for k in ("model", "loss", "train")}
    if max_epochs:
        sections["train"]["max_epochs"] = min(int(max_epochs), sections["train"].get("max_epochs", 50))
    return sections


def run_benchmark(sizes: dict, *, models=MODELS, device: str = "cpu", max_epochs: int | None = 10,
                  keep: str | Path | None = None, trace: bool = False, threads: int | None = None,
                  two_tower_params: str = TWO_TOWER_PARAMS, two_tower_overrides: dict | None = None,
                  say=print) -> dict:
    """Generate (or reuse) the log, run the study's steps, return every figure (see ``main``)."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {list(MODELS)}")
    with contextlib.ExitStack() as stack:
        folder = Path(keep) if keep else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_scale_")))
        path, generated = ensure_log(folder, sizes)
        say(f"log: {path} ({path.stat().st_size / 1e6:.0f} MB; "
            + ("reused" if generated["reused"] else f"generated in {generated['seconds']:.1f} s, "
                                                     f"child peak RSS {generated['peak_rss_gb']:.2f} GB") + ")")
        return _study(path, sizes, models, device, max_epochs, trace, threads or os.cpu_count() or 1,
                      two_tower_params, two_tower_overrides or {}, generated, say)


def _study(path, sizes, models, device, max_epochs, trace, threads, tt_params, tt_overrides, generated,
           say) -> dict:
    import torch

    from ..core.device import pick_device, set_threads
    from ..core.runs import configure
    from . import baselines, evaluate as evaluation
    from .data import build_prepared
    from .train import Trainer

    data_section = {"dataset": "interactions", "path": str(path)}
    tt = two_tower_sections(max_epochs, tt_params)
    tt["train"]["threads"] = threads
    for section, values in tt_overrides.items():
        tt[section].update(values)
    load0 = os.getloadavg()
    results = {"sizes": sizes, "years": YEARS, "seed": SEED, "device": device, "models": list(models),
               "settings": {m: dict(SETTINGS.get(m, {})) for m in models if m != "two_tower"},
               "two_tower_params": tt_params, "two_tower_sections": tt, "generate": generated,
               "grid_search": False, "metrics": {},
               "machine": {"cpus": os.cpu_count(), "threads": threads, "loadavg_start": load0}}
    if "two_tower" in models:
        results["settings"]["two_tower"] = tt
    say(f"study on {sizes['n_interactions']:,} interactions, {sizes['n_users']:,} users, {sizes['n_items']:,} items "
        f"(device {device}, {threads} threads; one setting per model, no grid search; load average {load0[0]:.2f} on "
        f"{os.cpu_count()} CPUs, shared)")
    if trace:
        tracemalloc.start()
    with RSSSampler() as sampler, tempfile.TemporaryDirectory(prefix="bench_scale_prep_") as folder:
        steps = Steps(sampler, trace, say)
        t_start = time.perf_counter()
        base_cfg = configure(data=data_section, model={"kind": "popularity"}, train={"threads": threads}, seed=SEED,
                             device=device).cfg
        data = steps.run("load + split (build_prepared)", lambda: build_prepared(base_cfg["data"], SEED, Path(folder)))
        results["data"] = {"n_users": data.n_users, "n_items": data.n_items, "train": len(data.train),
                           "val": len(data.val), "test": len(data.test)}
        say(f"  prepared: {data.n_users:,} users x {data.n_items:,} items; train {len(data.train):,}, "
            f"val {len(data.val):,}, test {len(data.test):,} interactions")
        n_eval = len(evaluation.ground_truth(data, base_cfg, "test")[1])
        results["evaluated_test_users"] = n_eval

        def evaluate(name, model, cfg, dev):
            entry, _ = steps.run(f"evaluate {name} (test, bootstrap CIs)",
                                 lambda: evaluation.evaluate_split(model, data, cfg, "test", dev))
            results["metrics"][name] = entry

        for name in [m for m in models if m != "two_tower"]:
            hyper = dict(SETTINGS[name])
            if name == "ease":
                if data.n_items > baselines.EASE().max_items:
                    say(f"  ease: skipped, {data.n_items:,} items is over EASE's max_items")
                    continue
                hyper["l2"] = round(ease_l2(data.matrix("train")), 3)
                results["settings"]["ease"] = hyper
            cfg = configure(data=data_section, model={"kind": name, "params": hyper}, train={"threads": threads},
                            seed=SEED, device=device).cfg
            set_threads(cfg["train"]["threads"], cfg["train"]["threads"])
            dev = pick_device(cfg["device"])
            model = steps.run(f"fit {name}", lambda: baselines.BASELINES[name](**hyper).fit(
                data.matrix("train"), data.train))
            evaluate(name, model, cfg, dev)
            del model

        if "two_tower" in models:
            cfg = configure(data=data_section, seed=SEED, device=device, **tt).cfg
            set_threads(cfg["train"]["threads"], cfg["train"]["threads"])
            dev = pick_device(cfg["device"])
            marks = []

            def train():
                trainer = Trainer(data, cfg["model"], cfg["loss"], cfg["train"], cfg["seed"], cfg["device"])
                marks.append(time.perf_counter())

                def on_epoch(model):
                    figures = evaluation.validation_figures(model, data, cfg, dev)
                    marks.append(time.perf_counter())
                    return figures

                return trainer, trainer.fit(on_epoch=on_epoch, progress=False)

            t0 = time.perf_counter()
            trainer, fit = steps.run(f"train two_tower ({Path(tt_params).stem}, <= {cfg['train']['max_epochs']} "
                                     f"epochs)", train)
            per_epoch = np.diff(marks).tolist()
            full_max = two_tower_sections(None, tt_params)["train"].get("max_epochs", 50)
            results["two_tower"] = _two_tower_figures(cfg, fit, marks[0] - t0, per_epoch, steps.rows[-1]["seconds"],
                                                      full_max)
            model = trainer.model
            del trainer, fit  # as in the study, evaluation holds the model, not the trainer's state
            evaluate("two_tower", model, cfg, dev)
            del model
        results["total_s"] = time.perf_counter() - t_start
    results["steps"] = steps.rows
    results["process_peak_rss_gb"] = max(process_peak_bytes() / GB, max(r["peak_rss_gb"] for r in steps.rows))
    if trace:
        results["dense_users_items_float32_mb"] = data.n_users * data.n_items * 4 / 1e6
        results["traced_peak_mb"] = max(r["traced_peak_mb"] for r in steps.rows)
        tracemalloc.stop()
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["torch_threads"] = torch.get_num_threads()
    results["targets"] = targets(results)
    return results


def _two_tower_figures(cfg, fit, setup_s, per_epoch, step_s, full_max) -> dict:
    t = cfg["train"]
    epoch_s = float(np.median(per_epoch)) if per_epoch else float("nan")
    fewest = min(t["patience"] + 1, full_max)
    return {"epochs": len(per_epoch), "max_epochs": t["max_epochs"], "params_max_epochs": full_max,
            "capped": t["max_epochs"] < full_max, "best_epoch": fit.best_epoch, "stopped_epoch": fit.stopped_epoch,
            "early_stopped": fit.stopped_epoch < t["max_epochs"], "setup_s": setup_s, "seconds_per_epoch": per_epoch,
            "median_epoch_s": epoch_s, "step_s": step_s,
            "history": [{k: (v if isinstance(v, (bool, int)) else float(v)) for k, v in row.items()}
                        for row in fit.history],
            "projected_full_s": [setup_s + fewest * epoch_s, setup_s + full_max * epoch_s],
            "projected_epochs": [fewest, full_max]}


def targets(r: dict) -> list[dict]:
    """The issue's targets with this run's figures (``verdict``: PASS, MISS or not checked)."""
    load = next(row["seconds"] for row in r["steps"] if row["step"].startswith("load + split"))
    out = [{"name": "load + split", "limit": TARGETS["load_split_s"], "unit": "s", "value": load},
           {"name": "whole benchmark", "limit": TARGETS["total_s"], "unit": "s", "value": r["total_s"]},
           {"name": "peak RSS", "limit": TARGETS["peak_rss_gb"], "unit": "GB", "value": r["process_peak_rss_gb"]}]
    tt = r.get("two_tower")
    if tt:
        train_s = tt["step_s"]
        lo, hi = tt["projected_full_s"]
        if tt["early_stopped"]:
            out[1]["note"] = f"two-tower early-stopped at epoch {tt['stopped_epoch']}"
        elif tt["capped"]:  # verdicts are on what was measured; the projection is stated beside them
            out[1]["note"] = (f"two-tower capped at {tt['max_epochs']} of {tt['params_max_epochs']} epochs; uncapped "
                              f"projection {(r['total_s'] - train_s + lo) / 60:.1f}-"
                              f"{(r['total_s'] - train_s + hi) / 60:.1f} min")
        cuda = {"name": "two-tower on cuda", "limit": TARGETS["two_tower_cuda_s"], "unit": "s", "value": train_s}
        if r["device"] != "cuda":
            cuda["verdict"] = "not checked"
            cuda["note"] = f"--device {r['device']}"
        elif tt["capped"] and not tt["early_stopped"]:
            cuda["note"] = f"{tt['epochs']} epochs; uncapped projection {lo:.0f}-{hi:.0f} s"
        out.append(cuda)
    for t in out:
        t.setdefault("verdict", "PASS" if t["value"] <= t["limit"] else "MISS")
    return out


def _fmt(value: float, unit: str) -> str:
    if unit == "s" and value >= 600:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s" if unit == "s" else f"{value:.2f} GB"


def report(r: dict, scale: float | None, say=print) -> None:
    say("")
    say(f"{'step':<50} {'wall s':>9} {'peak RSS GB':>12} {'RSS at start GB':>16}"
        + (f" {'traced peak MB':>15}" if "traced_peak_mb" in r else ""))
    for row in r["steps"]:
        say(f"{row['step']:<50} {row['seconds']:9.1f} {row['peak_rss_gb']:12.2f} {row['start_rss_gb']:16.2f}"
            + (f" {row['traced_peak_mb']:15.1f}" if "traced_peak_mb" in row else ""))
    say(f"{'total (load + split .. last evaluation)':<50} {r['total_s']:9.1f} {r['process_peak_rss_gb']:12.2f}")
    g = r["generate"]
    say("generating the log (child process, not in the total): "
        + ("reused from --keep" if g["reused"] else f"{g['seconds']:.1f} s, peak RSS {g['peak_rss_gb']:.2f} GB"))
    settings = "; ".join(f"{m} {json.dumps(v, sort_keys=True)}" for m, v in r["settings"].items() if m != "two_tower")
    say(f"settings (one per model, no grid search): {settings}")
    if r.get("two_tower"):
        tt = r["two_tower"]
        say(f"two-tower ({r['two_tower_params']}): {tt['epochs']} epochs (max {tt['max_epochs']}; the params allow "
            f"{tt['params_max_epochs']}), best epoch {tt['best_epoch']}, setup {tt['setup_s']:.1f} s, seconds per epoch "
            f"(training + validation) " + ", ".join(f"{s:.1f}" for s in tt["seconds_per_epoch"])
            + f"; projected uncapped run: {tt['projected_full_s'][0]:.0f}-{tt['projected_full_s'][1]:.0f} s "
              f"({tt['projected_epochs'][0]}-{tt['projected_epochs'][1]} epochs)")
    for m, entry in r["metrics"].items():
        ci = entry["ci"]["ndcg@10"]
        say(f"  {m:<18} test NDCG@10 {entry['metrics']['ndcg@10']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]  "
            f"Recall@10 {entry['metrics']['recall@10']:.4f}  ({entry['n_users']:,} users)")
    if "traced_peak_mb" in r:
        worst = max(r["steps"], key=lambda row: row["traced_peak_mb"])
        say(f"tracemalloc: largest traced peak {r['traced_peak_mb']:.1f} MB ({worst['step']}); a dense users x items "
            f"float32 array is {r['dense_users_items_float32_mb']:.1f} MB")
    la0, la1 = r["machine"]["loadavg_start"][0], r["machine"]["loadavg_end"][0]
    at = f" (stated for --scale 1.0; this run: --scale {scale:g})" if scale is not None and scale != 1.0 else ""
    say(f"targets{at}; {r['machine']['cpus']} CPUs shared with other work, load average {la0:.2f} at start, "
        f"{la1:.2f} at end: timings are noisy")
    for t in r["targets"]:
        limit = f"{t['limit'] / 60:.0f} min" if t["unit"] == "s" and t["limit"] >= 120 else \
            (f"{t['limit']:.0f} s" if t["unit"] == "s" else f"{t['limit']:.0f} GB")
        say(f"  {t['name'] + ' <= ' + limit:<32} {_fmt(t['value'], t['unit']):>10}  {t['verdict']}"
            + (f"  ({t['note']})" if t.get("note") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0: MovieLens-20M size (default)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--max-epochs", type=int, default=10, help="cap on the two-tower's epochs; 0: the params' own")
    ap.add_argument("--two-tower", default=TWO_TOWER_PARAMS, help="the two-tower's params file (its model, loss "
                    "and train sections)")
    ap.add_argument("--threads", type=int, help="torch and FAISS threads (default: every CPU, os.cpu_count())")
    ap.add_argument("--keep", help="folder for the generated log, reused when present with the same size")
    ap.add_argument("--json", help="write every figure as JSON here")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--tracemalloc", action="store_true", help="trace Python (numpy) allocations per step")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sizes = sizes_for(args.scale)
    r = run_benchmark(sizes, models=models, device=args.device, max_epochs=args.max_epochs or None, keep=args.keep,
                      trace=args.tracemalloc, threads=args.threads, two_tower_params=args.two_tower)
    r["scale"] = args.scale
    report(r, args.scale)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1, default=_jsonable))
    return 0


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
