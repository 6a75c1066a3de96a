"""The training loop, top to bottom: in-batch InfoNCE (plus optional mined hard negatives),
AdamW, gradient accumulation with an optimizer step every ``accum_steps`` micro-batches and
on the last micro-batch of an epoch (as the reference: 138 pairs at batch 32 make 5
micro-batches, hence 1 update per epoch). Validation recall over the whole bank after every
epoch (epoch 0 = before training)."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..core import retrieval
from .data import gather
from .towers import doc_tower, heuristic_query


PROGRESS_SECONDS = 60.0  # within an epoch, a progress line at most this often


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def updates_per_epoch(n_pairs: int, batch_size: int, accum_steps: int) -> int:
    micro = math.ceil(n_pairs / batch_size)
    return math.ceil(micro / accum_steps)


def info_nce(q: torch.Tensor, d: torch.Tensor, temperature: float,
             hard: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each query against the batch's documents (its own on the diagonal),
    plus, if given, its own hard negatives ``hard`` (B, H, dim)."""
    logits = q @ d.T
    if hard is not None and hard.shape[1]:
        logits = torch.cat([logits, torch.einsum("bd,bhd->bh", q, hard)], dim=1)
    labels = torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits / temperature, labels)


@torch.inference_mode()
def encode_queries(tower, bank_t: torch.Tensor, starts: np.ndarray, ctx_len: int,
                   batch: int = 256) -> np.ndarray:
    was = tower.training
    tower.eval()
    out = []
    for s in range(0, len(starts), batch):
        ctx, _ = gather(bank_t, starts[s:s + batch], ctx_len)
        out.append(tower(ctx).float().cpu().numpy())
    tower.train(was)
    return np.concatenate(out) if out else np.zeros((0, bank_t.shape[1]), np.float32)


@torch.inference_mode()
def encode_heuristic(bank_t: torch.Tensor, starts: np.ndarray, ctx_len: int, kind: str,
                     decay: float, batch: int = 512) -> np.ndarray:
    out = []
    for s in range(0, len(starts), batch):
        ctx, _ = gather(bank_t, starts[s:s + batch], ctx_len)
        out.append(heuristic_query(ctx, kind, decay).float().cpu().numpy())
    return np.concatenate(out)


def mine_hard_negatives(index, bank_t, starts, ctx_len, n, pool, decay, seed) -> np.ndarray:
    """For each pair, ``n`` bank chunks drawn from the top ``pool`` neighbours of its
    exp-weighted context query, the target itself excluded."""
    q = encode_heuristic(bank_t, starts, ctx_len, "exp_weighted", decay)
    ids = retrieval.search(index, q, pool + 1)
    targets = starts + ctx_len
    rng = np.random.default_rng(seed)
    out = np.empty((len(starts), n), np.int64)
    for i in range(len(starts)):
        cand = ids[i][(ids[i] != targets[i]) & (ids[i] >= 0)][:pool]
        out[i] = rng.choice(cand, size=n, replace=len(cand) < n)
    return out


def epochs_to_run(train_cfg: dict) -> int:
    """``train.max_epochs``, capped by ``train.epoch_cap`` when set (quick profiles, smoke):
    no early stopping here, every epoch up to the bound runs."""
    cap = train_cfg["epoch_cap"]
    return train_cfg["max_epochs"] if cap is None else min(train_cfg["max_epochs"], cap)


def evaluate_tower(tower, bank_t, index, starts, ctx_len, ks, temperature, batch_size) -> dict:
    q = encode_queries(tower, bank_t, starts, ctx_len)
    targets = starts + ctx_len
    r = retrieval.ranks(retrieval.search(index, q, max(ks)), targets)
    out = retrieval.metrics_from_ranks(r, ks)
    d = F.normalize(bank_t[torch.as_tensor(targets, device=bank_t.device)], dim=-1).float().cpu().numpy()
    out["inbatch_top1"] = retrieval.in_batch_top1(q, d, batch_size)
    with torch.no_grad():
        losses = [float(info_nce(torch.from_numpy(q[s:s + batch_size]), torch.from_numpy(d[s:s + batch_size]),
                                 temperature)) for s in range(0, len(q), batch_size) if len(q[s:s + batch_size]) > 1]
    out["val_loss"] = float(np.mean(losses)) if losses else float("nan")
    return out


def fit(tower, bank_t: torch.Tensor, index, train_starts: np.ndarray, val_starts: np.ndarray,
        cfg: dict, seed: int, log=print) -> dict:
    """Train ``tower`` in place; return the per-epoch history and the update count."""
    d, lo, t, e = cfg["data"], cfg["loss"], cfg["train"], cfg["evaluate"]
    ctx_len, bs, accum = d["ctx_len"], t["batch_size"], t["accum_steps"]
    epochs = epochs_to_run(t)
    ks = e["cutoffs"]
    val_eval = val_starts[:t["epoch_eval_queries"]]
    hard = None
    if lo["hard_negatives"] > 0:
        t0 = time.perf_counter()
        hard = mine_hard_negatives(index, bank_t, train_starts, ctx_len, lo["hard_negatives"],
                                   lo["hard_pool"], e["heuristic_decay"], seed)
        log(f"mined {lo['hard_negatives']} hard negatives per pair in {time.perf_counter() - t0:.1f} s")
    opt = torch.optim.AdamW(tower.parameters(), lr=t["learning_rate"], weight_decay=t["weight_decay"])
    rng = np.random.default_rng(seed)
    history, updates = [], 0
    row = {"epoch": 0, "updates": 0, "train_loss": float("nan"), "seconds": 0.0}
    row.update(evaluate_tower(tower, bank_t, index, val_eval, ctx_len, ks, lo["temperature"], bs))
    history.append(row)
    log(_fmt_row(row))
    n = len(train_starts)
    micro_total = math.ceil(n / bs)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        tower.train()
        order = rng.permutation(n)
        losses, shown = [], t0
        opt.zero_grad(set_to_none=True)
        for m in range(micro_total):
            idx = order[m * bs:(m + 1) * bs]
            ctx, tgt = gather(bank_t, train_starts[idx], ctx_len)
            q = tower(ctx)
            hn = None if hard is None else doc_tower(bank_t[torch.as_tensor(hard[idx], device=bank_t.device)])
            loss = info_nce(q, doc_tower(tgt), lo["temperature"], hn)
            (loss / accum).backward()
            losses.append(float(loss.detach()))
            if (m + 1) % accum == 0 or m == micro_total - 1:
                opt.step()
                opt.zero_grad(set_to_none=True)
                updates += 1
            if time.perf_counter() - shown >= PROGRESS_SECONDS and m < micro_total - 1:
                shown = time.perf_counter()  # a long epoch (every window: 448 micro-batches) shows its pace
                log(f"  epoch {epoch}: {m + 1}/{micro_total} micro-batches, {shown - t0:.0f} s")
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "updates": updates, "train_loss": float(np.mean(losses)),
               "seconds": train_seconds}
        if not math.isfinite(row["train_loss"]):
            raise DivergedError(f"epoch {epoch}: the training loss is {row['train_loss']} (diverged; a learning "
                                f"rate of {t['learning_rate']} may be too high); nothing was cached")
        row.update(evaluate_tower(tower, bank_t, index, val_eval, ctx_len, ks, lo["temperature"], bs))
        history.append(row)
        log(_fmt_row(row))
    return {"history": history, "updates": updates, "epochs": epochs,
            "updates_per_epoch": updates_per_epoch(n, bs, accum), "micro_batches_per_epoch": micro_total}


def _fmt_row(row: dict) -> str:
    rec = " ".join(f"R@{k.split('@')[1]}={v:.3f}" for k, v in row.items() if k.startswith("recall@"))
    return (f"epoch {row['epoch']:>3} updates {row['updates']:>5} train_loss {row['train_loss']:.4f} "
            f"val_loss {row['val_loss']:.4f} {rec} ({row['seconds']:.1f}s)")
