"""Benchmark: full-bank Recall@K for 1,000 queries over the default bank (exact FAISS inner
product, top-1000), printed in seconds.

    python -m lib.wikiseq.bench                 # the default bank (embeds it once if not cached)
    python -m lib.wikiseq.bench --synthetic     # 61,749 random 384-d vectors, no model needed
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", action="store_true", help="random vectors of the default bank's size")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    from ..core import retrieval
    from ..core.device import set_threads
    from .train import encode_heuristic
    set_threads(args.threads, args.threads)
    cutoffs = [10, 100, 500, 1000]
    if args.synthetic:
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((61749, 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        targets = rng.choice(len(vecs), args.queries, replace=False)
        q = vecs[targets] + 0.5 * rng.standard_normal((args.queries, 384)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        what = "synthetic bank"
    else:
        from ..core.runs import configure
        from . import steps
        run = configure(study="wikiseq", run="bench", data={"n_eval": args.queries})
        bank, pairs = steps.load_pairs(run)
        vecs, ctx = bank.vectors, run.cfg["data"]["ctx_len"]
        starts = pairs["eval"]
        targets = starts + ctx
        q = encode_heuristic(torch.from_numpy(vecs), starts, ctx, "exp_weighted", 0.9)
        what = "default bank, exp-weighted queries"
    t0 = time.perf_counter()
    index = retrieval.build_index(vecs, "exact")
    t_build = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        m = retrieval.metrics_from_ranks(retrieval.ranks(retrieval.search(index, q, max(cutoffs)), targets), cutoffs)
        times.append(time.perf_counter() - t0)
    out = {"bank": len(vecs), "queries": len(q), "build_s": t_build, "search_s": min(times), **m}
    print(f"{what}: {len(vecs):,} vectors x {vecs.shape[1]}, {len(q):,} queries, {args.threads} threads")
    print(f"index build {t_build:.2f} s; Recall@K for all queries in {min(times):.2f} s "
          f"(best of {args.repeats}; target < 10 s)")
    print("  " + "  ".join(f"{k}={v:.4f}" for k, v in m.items()))
    return out


if __name__ == "__main__":
    main()
