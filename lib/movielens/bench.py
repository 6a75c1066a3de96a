"""Benchmark the MovieLens speed targets and print each figure against its target.

    python -m lib.movielens.bench [--params params/movielens/two_tower_reference.yaml]
                                  [--best params/movielens/tt_u11_half_life_7d.yaml] [--threads N] [--device cuda]

Measures, on this machine: (1) one full training run of the reference config (early
stopping included: the epoch count is the rule's) with its median epoch (training and the
validation loss) and steps per second, (2) one full training run of the best config, (3)
scoring and ranking all evaluated test users over the full catalog (top-100, training items
excluded, FAISS), (4) the metric computation. Targets (``TARGETS``) by device: on the CPU
the reference epoch <= 10 s (2 threads: ``make bench``), on a GPU the reference run <= 30 s.
Runs in a temporary build folder, so it never touches cached runs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


# The targets of the speed issue, by device (None: no target there, the figure is printed).
TARGETS = {"cpu": {"epoch": 10.0, "run": None, "best_run": 180.0, "rank": 5.0},
           "cuda": {"epoch": None, "run": 30.0, "best_run": None, "rank": 5.0}}


def _train_and_rank(params: str, overrides: dict):
    import torch

    from ..core import metrics
    from ..core.device import pick_device, set_threads
    from ..core.runs import ROOT, run_from_file
    from . import evaluate, steps
    run = run_from_file(ROOT / params, overrides)
    data = steps.load_data(run)
    t0 = time.perf_counter()
    info = steps.train(run)
    train_s = time.perf_counter() - t0
    model = steps.load_model(run, data)
    device = pick_device(run.cfg["device"])
    set_threads(run.cfg["train"]["threads"])
    truth, users = evaluate.ground_truth(data, run.cfg, "test")
    t0 = time.perf_counter()
    top = evaluate.rank(model, data, users, 100, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rank_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics.per_user_metrics(metrics.hit_matrix(top, truth, users), np.diff(truth[users].indptr))
    metric_s = time.perf_counter() - t0
    record = json.loads((run.model_dir / "train.json").read_text())
    return run, data, info, record, train_s, rank_s, metric_s, len(users)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/movielens/two_tower_reference.yaml")
    ap.add_argument("--best", default="params/movielens/tt_u11_half_life_7d.yaml",
                    help="the best configuration, timed too ('' to skip)")
    ap.add_argument("--threads", type=int, help="torch threads for training (default: the params' train.threads)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default: the params' device")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TWOTOWER_BUILD_DIR"] = tmp
        import torch
        overrides = {}
        if args.threads:
            overrides["train"] = {"threads": args.threads}
        if args.device:
            overrides["device"] = args.device
        run, data, info, record, train_s, rank_s, metric_s, n_users = _train_and_rank(args.params, overrides)
        best = _train_and_rank(args.best, overrides) if args.best else None
    device = record["device"].split(":")[0]
    target = TARGETS.get(device, TARGETS["cpu"])
    from ..core.rendering import machine
    m = machine()  # speed, like the figures' last bits, depends on the kind of CPU: name it
    print(f"{run.cfg['run']}: device {record['device']}, torch threads {run.cfg['train']['threads']}, "
          f"{torch.get_num_threads()} after training; machine: {m['cpu']}, {m['cores']} CPUs, "
          f"torch CPU kernels {m['torch_cpu_capability']}"
          + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""))
    rows = []
    epochs = info.get("history")
    if epochs is not None:
        per_epoch = epochs["seconds"].to_numpy()
        steps_per_epoch = record["steps"] / len(per_epoch)
        print(f"epochs {len(per_epoch)} (best {int(epochs.loc[epochs['best'], 'epoch'].max())}), seconds per epoch: "
              f"median {np.median(per_epoch):.2f}, min {per_epoch.min():.2f}, max {per_epoch.max():.2f} "
              f"(each with its validation loss and NDCG@10)")
        rows.append(("reference epoch (median: training + validation loss)", float(np.median(per_epoch)), target["epoch"]))
        rows.append(("reference steps per second (median epoch)", steps_per_epoch / float(np.median(per_epoch)), None))
    rows.append((f"reference training run, {args.params}", train_s, target["run"]))
    if best is not None:
        b_run, _, b_info, b_record, b_train_s, *_ = best
        n_ep = len(b_info["history"]) if b_info.get("history") is not None else 0
        rows.append((f"best-config training run ({n_ep} epochs), {args.best}", b_train_s, target["best_run"]))
    rows += [(f"score + rank {n_users:,} users x {data.n_items:,} items (top-100)", rank_s, target["rank"]),
             ("metrics for those users", metric_s, None)]
    for name, value, limit in rows:
        unit = "/s" if "per second" in name else "s"
        verdict = "" if limit is None else (f"target <= {limit:g} s: " + ("PASS" if value <= limit else "MISS"))
        print(f"{name:<86} {value:8.2f} {unit:<2}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
