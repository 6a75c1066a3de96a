"""Benchmark: full-bank Recall@K for 1,000 queries over the default bank (exact FAISS inner
product, top-1000), printed in seconds; and the training micro-batch of the study's GRU query
tower at its real shape (32 windows x 100 chunks x 384, hidden 512 each way; InfoNCE, AdamW),
with what it implies for the study's runs.

    python -m lib.wikiseq.bench                 # the default bank (embeds it once if not cached)
    python -m lib.wikiseq.bench --synthetic     # 61,749 random 384-d vectors, no model needed
    python -m lib.wikiseq.bench --synthetic --device cuda   # the training step on the GPU
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
    ap.add_argument("--train-steps", type=int, default=20,
                    help="training micro-batches timed (after 2 untimed ones; 0 = skip)")
    ap.add_argument("--device", default="cpu", help="where the training step runs: cpu, cuda or auto")
    ap.add_argument("--hidden", type=int, default=512, help="GRU hidden size (the study's: 512)")
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
    if args.train_steps > 0:
        out["train"] = train_step(vecs, args.train_steps, args.device, args.hidden)
    return out


# micro-batches of the study's longest runs, for what a step's time implies
RUN_MICRO_BATCHES = {"v2_updates (1,247 pairs, 8 epochs)": 39 * 8, "all_updates (14,309 pairs, 1 epoch)": 448}


def train_step(vecs: np.ndarray, steps: int, device: str, hidden: int, batch: int = 32, ctx_len: int = 100) -> dict:
    """Seconds per training micro-batch of the GRU query tower (forward, InfoNCE over the
    batch, backward, AdamW step; the loss read back, as ``train.fit`` does), median of
    ``steps`` after 2 warm-up ones, on windows drawn from ``vecs``."""
    import torch
    from ..core.device import pick_device
    from .data import gather
    from .towers import build_query_tower, doc_tower
    from .train import info_nce
    dev = pick_device(device)
    torch.manual_seed(0)
    tower = build_query_tower({"tower": "gru", "gru_hidden": hidden, "decay": 0.9}, vecs.shape[1]).to(dev)
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-3, weight_decay=0.01)
    bank_t = torch.from_numpy(vecs).to(dev)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 2):
        starts = rng.integers(0, len(vecs) - ctx_len - 1, batch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        ctx, tgt = gather(bank_t, starts, ctx_len)
        loss = info_nce(tower(ctx), doc_tower(tgt), 0.07)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    print(f"training micro-batch ({batch} x {ctx_len} x {vecs.shape[1]}, GRU {hidden} each way, {dev}, "
          f"{torch.get_num_threads()} threads): median {step * 1000:.0f} ms of {steps} "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
    for run, micro in RUN_MICRO_BATCHES.items():
        print(f"  -> {run}: {micro} micro-batches, about {micro * step:.0f} s of training")
    return {"device": str(dev), "step_seconds": step, "steps": steps,
            "implied_seconds": {run: micro * step for run, micro in RUN_MICRO_BATCHES.items()}}


if __name__ == "__main__":
    main()
