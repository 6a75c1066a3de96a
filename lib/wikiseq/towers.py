"""Query towers over a context of chunk vectors, heuristics, and the identity doc tower."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

HEURISTICS = ("last", "mean", "exp_weighted")


def exp_weights(ctx_len: int, decay: float, device=None) -> torch.Tensor:
    """Weights proportional to decay**(T - t), t = 1..T (the last chunk weighs 1), summing to 1."""
    w = decay ** torch.arange(ctx_len - 1, -1, -1, dtype=torch.float32, device=device)
    return w / w.sum()


def heuristic_query(ctx: torch.Tensor, kind: str, decay: float = 0.9) -> torch.Tensor:
    """(B, T, d) -> (B, d) L2-normalised heuristic query."""
    if kind == "last":
        q = ctx[:, -1]
    elif kind == "mean":
        q = ctx.mean(1)
    elif kind == "exp_weighted":
        q = torch.einsum("btd,t->bd", ctx, exp_weights(ctx.shape[1], decay, ctx.device))
    else:
        raise ValueError(f"unknown heuristic {kind!r}; known: {HEURISTICS}")
    return F.normalize(q, dim=-1)


class GRUPool(nn.Module):
    """Bidirectional GRU (in -> hidden x 2), mean-pooled over time, then Linear(2 hidden -> out)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, zero_init: bool = False):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(ctx)
        return self.proj(h.mean(1))


class GRUPoolQuery(nn.Module):
    """The reference's query tower: GRUPool with a randomly initialised projection, L2 norm."""

    def __init__(self, in_dim: int, hidden: int = 512, out_dim: int | None = None):
        super().__init__()
        self.body = GRUPool(in_dim, hidden, out_dim or in_dim)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.body(ctx), dim=-1)


class ResidualQuery(nn.Module):
    """exp-weighted average of the context + a learned correction whose last layer starts at
    zero, L2-normalised: at step 0 it is exactly the exp-weighted heuristic."""

    def __init__(self, in_dim: int, hidden: int = 512, decay: float = 0.9):
        super().__init__()
        self.decay = decay
        self.correction = GRUPool(in_dim, hidden, in_dim, zero_init=True)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        base = torch.einsum("btd,t->bd", ctx, exp_weights(ctx.shape[1], self.decay, ctx.device))
        base = F.normalize(base, dim=-1)
        return F.normalize(base + self.correction(ctx), dim=-1)


def doc_tower(docs: torch.Tensor) -> torch.Tensor:
    """Identity document tower + L2 normalisation (as the reference)."""
    return F.normalize(docs, dim=-1)


def build_query_tower(model_cfg: dict, in_dim: int) -> nn.Module:
    """The query tower of the ``model`` params (``tower``, ``gru_hidden``, ``decay``)."""
    kind = model_cfg["tower"]
    if kind == "gru":
        return GRUPoolQuery(in_dim, model_cfg["gru_hidden"])
    if kind == "residual":
        return ResidualQuery(in_dim, model_cfg["gru_hidden"], model_cfg["decay"])
    raise ValueError(f"unknown tower {kind!r}")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
