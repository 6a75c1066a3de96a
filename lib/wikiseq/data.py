"""Context windows: (ctx_len chunks of one article, the next chunk of the same article).

A window is stored as the bank index of its first context chunk, ``s``: the context is
``bank[s : s + ctx_len]`` and the target is ``bank[s + ctx_len]``, which is valid because
an article's chunks are contiguous in the bank. Windows are never materialised (all
windows at ctx 100 would be gigabytes).

Train/validation split is by *article*: windows of one article overlap by up to
ctx_len - 1 chunks, so a split by window puts near-copies of validation contexts (and
their targets, inside other windows' contexts) into training.

A run's pairs (``make_pairs``: the article split, the sampled training and validation
windows and the common evaluation set) are cached in the run's data folder by ``pairs``,
the folder complete or absent.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from ..core.files import atomic_folder, file_lock, read_json
from ..core.params import ParamsError

PAIR_ARRAYS = ("train", "val", "eval", "train_articles", "val_articles")


def article_windows(article_start: np.ndarray, article_len: np.ndarray, ctx_len: int,
                    stride: int, articles: np.ndarray | None = None) -> np.ndarray:
    """Start indices of all windows of the given articles (all articles if None), in order.
    An article of n chunks gives floor((n - ctx_len - 1) / stride) + 1 windows if n > ctx_len."""
    if ctx_len < 1 or stride < 1:
        raise ParamsError(f"ctx_len and stride must be >= 1, got {ctx_len}, {stride}")
    ids = np.arange(len(article_len)) if articles is None else np.asarray(articles)
    out = []
    for a in ids:
        n = int(article_len[a])
        if n > ctx_len:
            out.append(int(article_start[a]) + np.arange(0, n - ctx_len, stride, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def n_windows(n: int, ctx_len: int, stride: int) -> int:
    return 0 if n <= ctx_len else (n - ctx_len - 1) // stride + 1


def split_articles(article_len: np.ndarray, ctx_len: int, val_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Articles with at least one window, shuffled with ``seed`` and cut into train / val
    (at least one of each). Returns sorted article ids."""
    seq = np.flatnonzero(article_len > ctx_len)
    if len(seq) < 2:
        raise ParamsError(f"need at least 2 articles longer than ctx_len={ctx_len} chunks to split "
                          f"train/val by article; the bank has {len(seq)}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(seq)
    n_val = min(len(seq) - 1, max(1, int(round(val_fraction * len(seq)))))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def sample(windows: np.ndarray, n: int | None, seed: int, what: str) -> np.ndarray:
    """``n`` windows drawn without replacement (all if None), returned in bank order."""
    if n is None or n >= len(windows):
        if n is not None and n > len(windows):
            raise ParamsError(f"{what}: asked for {n:,} pairs but only {len(windows):,} windows exist "
                              f"(lower it, lower data.stride or data.ctx_len, or use a bigger bank)")
        return windows
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(windows, size=n, replace=False))


def gather(vectors, starts, ctx_len: int):
    """(len(starts), ctx_len, d) contexts and (len(starts), d) targets; works for numpy arrays
    and torch tensors alike (fancy indexing)."""
    import torch
    if isinstance(vectors, torch.Tensor):
        s = torch.as_tensor(starts, dtype=torch.long, device=vectors.device)
        idx = s[:, None] + torch.arange(ctx_len, device=vectors.device)[None, :]
        return vectors[idx], vectors[s + ctx_len]
    s = np.asarray(starts, dtype=np.int64)
    idx = s[:, None] + np.arange(ctx_len)[None, :]
    return vectors[idx], vectors[s + ctx_len]


# -- a run's pairs ------------------------------------------------------------------------------
def make_pairs(bank, d: dict) -> dict:
    """The pairs of data params ``d`` over ``bank``: windows (as start indices) ``train``,
    ``val`` and ``eval``, the article split and a ``meta`` summary. ``eval``, the common
    evaluation set, is stride-1 windows of the validation articles: the same for every run
    that shares the bank, the split and ctx_len."""
    starts, lens = bank.article_start, bank.article_len
    ctx, seed = d["ctx_len"], d["split_seed"]
    train_art, val_art = split_articles(lens, ctx, d["val_fraction"], seed)
    train_all = article_windows(starts, lens, ctx, d["stride"], train_art)
    val_all = article_windows(starts, lens, ctx, d["stride"], val_art)
    n_train = d["n_train"]
    if d["pair_cap"] is not None:
        n_train = min(d["pair_cap"], n_train or len(train_all), len(train_all))
    train_s = sample(train_all, n_train, seed + 1, "data.n_train")
    val_s = sample(val_all, d["n_val"], seed + 2, "data.n_val")
    eval_all = article_windows(starts, lens, ctx, 1, val_art)
    eval_s = sample(eval_all, min(d["n_eval"], len(eval_all)), seed + 3, "data.n_eval")
    # epoch evaluation takes a prefix of val_s and in-batch blocks are consecutive: mix articles
    val_s = val_s[np.random.default_rng(seed + 4).permutation(len(val_s))]
    eval_s = eval_s[np.random.default_rng(seed + 5).permutation(len(eval_s))]
    seq_articles = int(np.sum(lens > ctx))
    meta = {
        "bank_key": bank.key, "bank_size": len(bank), "dim": bank.dim, "articles": len(bank.titles),
        "sequence_articles": seq_articles, "train_articles": len(train_art), "val_articles": len(val_art),
        "train_windows_available": int(len(train_all)), "val_windows_available": int(len(val_all)),
        "n_train": int(len(train_s)), "n_val": int(len(val_s)), "n_eval": int(len(eval_s)),
        "eval_windows_available": int(len(eval_all)),
        "chunks_per_sequence_article_median": float(np.median(lens[lens > ctx])) if seq_articles else 0.0,
        "chunks_per_article_median": float(np.median(lens)),
        "source_sha256": bank.source_sha256,
        "eval_set_sha256": hashlib.sha256(np.ascontiguousarray(eval_s, dtype=np.int64).tobytes()).hexdigest()[:16],
    }
    return {"train": train_s, "val": val_s, "eval": eval_s, "train_articles": train_art,
            "val_articles": val_art, "meta": meta}


def load_pairs(folder: Path, bank_key: str) -> dict | None:
    """The pairs saved in ``folder`` for this bank, or None if missing or unreadable."""
    meta = read_json(Path(folder) / "prepared.json")
    if not isinstance(meta, dict) or meta.get("bank_key") != bank_key:
        return None
    try:
        with np.load(Path(folder) / "pairs.npz") as z:
            out = {k: z[k] for k in PAIR_ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    out["meta"] = meta
    return out


def save_pairs(p: dict, folder: Path) -> None:
    """``pairs.npz`` + ``prepared.json``, the folder complete or absent."""
    with atomic_folder(folder) as tmp:
        np.savez(tmp / "pairs.npz", **{k: p[k] for k in PAIR_ARRAYS})
        (tmp / "prepared.json").write_text(json.dumps(p["meta"], indent=1, sort_keys=True) + "\n")


def pairs(bank, d: dict, folder: Path) -> dict:
    """The run's pairs (see ``make_pairs``), cached in ``folder`` (the run's data folder)."""
    folder = Path(folder)
    out = load_pairs(folder, bank.key)
    if out is not None:
        return out
    with file_lock(folder):  # parallel runs on the same data prepare it once
        out = load_pairs(folder, bank.key)
        if out is None:
            out = make_pairs(bank, d)
            save_pairs(out, folder)
    return out
