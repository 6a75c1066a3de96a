"""Benchmark the MovieLens speed targets and print the figures.

    python -m lib.movielens.bench [--params params/movielens/two_tower_reference.yaml] [--threads N] [--device cuda]

Measures, on this machine: (1) one full training run of the given config (early stopping
included; the per-epoch time and the epoch count are printed too, since the count is
set by early stopping), (2) scoring and ranking all evaluated test users over the full catalog (top-100,
training items excluded, FAISS), (3) the metric computation. Prints each with its target.
Runs in a temporary build folder, so it never touches cached runs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/movielens/two_tower_reference.yaml")
    ap.add_argument("--threads", type=int, help="torch threads for training (default: the params' train.threads)")
    ap.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default: the params' device")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TWOTOWER_BUILD_DIR"] = tmp
        import torch

        from ..core import metrics
        from ..core.device import pick_device, set_threads
        from ..core.runs import ROOT, run_from_file
        from . import evaluate, steps

        overrides = {}
        if args.threads:
            overrides["train"] = {"threads": args.threads}
        if args.device:
            overrides["device"] = args.device
        run = run_from_file(ROOT / args.params, overrides)
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
        rank_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics.per_user_metrics(metrics.hit_matrix(top, truth, users), np.diff(truth[users].indptr))
        metric_s = time.perf_counter() - t0
    epochs = info.get("history")
    print(f"{run.cfg['run']}: device {run.cfg['device']}, torch threads {run.cfg['train']['threads']}, "
          f"{torch.get_num_threads()} after training")
    if epochs is not None:
        per_epoch = epochs["seconds"].to_numpy()
        print(f"epochs {len(per_epoch)} (best {int(epochs.loc[epochs['best'], 'epoch'].max())}), "
              f"seconds per epoch: median {np.median(per_epoch):.1f}, min {per_epoch.min():.1f}, max {per_epoch.max():.1f}")
    rows = [("training run, " + args.params, train_s, 180.0),
            (f"score + rank {len(users):,} users x {data.n_items:,} items", rank_s, 5.0),
            ("metrics for those users", metric_s, None)]
    for name, secs, target in rows:
        verdict = "" if target is None else (f"target < {target:.0f} s: " + ("PASS" if secs < target else "FAIL"))
        print(f"{name:<70} {secs:8.2f} s  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
