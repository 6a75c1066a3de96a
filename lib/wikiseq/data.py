"""Context windows: (ctx_len chunks of one article, the next chunk of the same article).

A window is stored as the bank index of its first context chunk, ``s``: the context is
``bank[s : s + ctx_len]`` and the target is ``bank[s + ctx_len]``, which is valid because
an article's chunks are contiguous in the bank. Windows are never materialised (all
windows at ctx 100 would be gigabytes).

Train/validation split is by *article*: windows of one article overlap by up to
ctx_len - 1 chunks, so a split by window puts near-copies of validation contexts (and
their targets, inside other windows' contexts) into training.
"""
from __future__ import annotations

import numpy as np

from ..config import ParamsError


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
