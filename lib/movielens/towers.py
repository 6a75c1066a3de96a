"""User and item towers for MovieLens-style data.

User tower inputs (each switchable): categorical features (gender, age group,
occupation), a user-ID embedding, and the user's training history pooled over item
embeddings (mean or recency-weighted). Item tower inputs: genres (multi-hot), release year,
an item-ID embedding. Each tower: MLP (ReLU, dropout) then a linear output, L2-normalised.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F


class ByteDropout(nn.Module):
    """Dropout whose mask comes from random *bytes* (8 per 64-bit draw) instead of one float
    per element: on a 2-core CPU, drawing the floats was a third of a training step.
    The drop probability is rounded to a multiple of 1/256 (0.2 -> 51/256 = 0.1992)."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = int(round(p * 256))
        self.p = self.threshold / 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep / (1.0 - self.p)


def mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), ByteDropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class ItemTower(nn.Module):
    def __init__(self, n_items: int, genres: np.ndarray, year: np.ndarray, cfg: dict,
                 popularity: np.ndarray | None = None):
        """``popularity`` (n_items, k), optional: standardised training-period popularity
        features (see ``training.popularity_features``), appended to genres and year."""
        super().__init__()
        self.use_features = cfg["item_features"]
        self.use_ids = cfg["id_embeddings"]
        y = np.nan_to_num(year, nan=np.nanmean(year) if np.isfinite(year).any() else 0.0)
        y = (y - y.mean()) / (y.std() + 1e-6)
        if popularity is not None:
            genres = np.concatenate([genres, popularity], axis=1)  # "genres" below: all dense features but year
        self.register_buffer("genres", torch.as_tensor(genres, dtype=torch.float32))
        self.register_buffer("year", torch.as_tensor(y, dtype=torch.float32)[:, None])
        in_dim = 0
        if self.use_features:
            in_dim += genres.shape[1] + 1
        if self.use_ids:
            self.id_emb = nn.Embedding(n_items, cfg["id_dim"])
            nn.init.normal_(self.id_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if in_dim == 0:
            raise ValueError("item tower has no input: enable item_features or id_embeddings")
        self.net = mlp(in_dim, cfg["hidden"], cfg["embedding_dim"], cfg["dropout"])
        # Features-only: items with identical features get identical embeddings, so the MLP
        # runs once per distinct feature row (ML-1M: 1,479 rows for 3,416 movies) and the
        # result is gathered. Exact in eval mode; in training, such items share a dropout mask.
        self.grouped = self.use_features and not self.use_ids
        if self.grouped:
            feats = np.concatenate([genres, y[:, None]], axis=1)
            rows, inverse = np.unique(feats, axis=0, return_inverse=True)
            self.register_buffer("group_features", torch.as_tensor(rows, dtype=torch.float32))
            self.register_buffer("item_group", torch.as_tensor(inverse.ravel(), dtype=torch.long))

    def group_embeddings(self) -> torch.Tensor:
        """(distinct feature rows, d): row ``item_group[i]`` is item i's embedding."""
        return F.normalize(self.net(self.group_features), dim=-1)

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of ``items`` (all items if None), L2-normalised."""
        if self.grouped:
            out = self.group_embeddings()
            return out[self.item_group] if items is None else out[self.item_group[items]]
        parts = []
        if self.use_features:
            g = self.genres if items is None else self.genres[items]
            yr = self.year if items is None else self.year[items]
            parts += [g, yr]
        if self.use_ids:
            parts.append(self.id_emb.weight if items is None else self.id_emb(items))
        return F.normalize(self.net(torch.cat(parts, dim=1)), dim=-1)


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_items: int, gender: np.ndarray, age: np.ndarray,
                 occupation: np.ndarray, cfg: dict):
        super().__init__()
        self.use_features = cfg["user_features"]
        self.use_ids = cfg["id_embeddings"]
        self.history = cfg["history"]
        fd = cfg["feature_dim"]
        for name, arr in (("gender", gender), ("age", age), ("occupation", occupation)):
            self.register_buffer(name, torch.tensor(np.asarray(arr), dtype=torch.long))
        in_dim = 0
        if self.use_features:
            self.gender_emb = nn.Embedding(int(gender.max()) + 1, fd)
            self.age_emb = nn.Embedding(int(age.max()) + 1, fd)
            self.occ_emb = nn.Embedding(int(occupation.max()) + 1, fd)
            in_dim += 3 * fd
        if self.use_ids:
            self.id_emb = nn.Embedding(n_users, cfg["id_dim"])
            nn.init.normal_(self.id_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if self.history != "none":
            self.hist_emb = nn.Embedding(n_items, cfg["id_dim"])
            nn.init.normal_(self.hist_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if in_dim == 0:
            raise ValueError("user tower has no input: enable user_features, id_embeddings or history")
        self.net = mlp(in_dim, cfg["hidden"], cfg["embedding_dim"], cfg["dropout"])
        # Set by set_history(): weighted (n_users x n_items) matrix and a has-history flag.
        self.hist = None
        self.register_buffer("has_history", torch.zeros(n_users, dtype=torch.bool))

    def set_history(self, weights: sp.csr_matrix) -> None:
        """``weights[u, i]`` > 0 for items in u's history (training interactions only)."""
        self.hist = weights.tocsr().astype(np.float32)
        self.has_history = torch.as_tensor(np.diff(self.hist.indptr) > 0, device=self.has_history.device)

    def _pooled_history(self, users: torch.Tensor, leave_out: torch.Tensor | None,
                        weights: sp.csr_matrix | None = None) -> torch.Tensor:
        """Weighted mean of the history items' embeddings. ``weights`` (len(users) x
        n_items) replaces the stored history rows (user-batched training feeds only the
        input part of a user's history there)."""
        dev = self.hist_emb.weight.device
        rows = (self.hist[users.cpu().numpy().copy()] if weights is None else weights).tocoo()
        idx = torch.as_tensor(np.vstack([rows.row, rows.col]), dtype=torch.long, device=dev)
        w = torch.sparse_coo_tensor(idx, torch.as_tensor(rows.data, device=dev), (len(users), self.hist.shape[1]),
                                    check_invariants=False)
        total = torch.sparse.mm(w, self.hist_emb.weight)
        norm = torch.zeros(len(users), device=dev).index_add_(0, idx[0], w._values())
        if leave_out is not None:
            # The training target must not be in its own history (it would be copied, not predicted).
            is_target = torch.as_tensor(rows.col == leave_out.cpu().numpy()[rows.row], device=dev)
            w_t = torch.zeros(len(users), device=dev).index_add_(0, idx[0], w._values() * is_target)
            total = total - w_t[:, None] * self.hist_emb(leave_out)
            norm = norm - w_t
        return total / norm.clamp_min(1e-6)[:, None]

    @property
    def grouped(self) -> bool:
        return self.use_features and not self.use_ids and self.history == "none"

    def forward_grouped(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features only: run the MLP once per distinct (gender, age, occupation) in the
        batch (ML-1M has 241 in all). Returns (embeddings of the distinct rows, row index of
        each user). See ItemTower for the dropout caveat."""
        key = (self.gender[users] * self.age_emb.num_embeddings + self.age[users]) \
            * self.occ_emb.num_embeddings + self.occupation[users]
        uniq, inverse = torch.unique(key, return_inverse=True)
        first = torch.zeros_like(uniq).scatter_(0, inverse, users)  # one user per distinct key
        return self._features_forward(first), inverse

    def forward(self, users: torch.Tensor, leave_out: torch.Tensor | None = None,
                history: sp.csr_matrix | None = None) -> torch.Tensor:
        if self.grouped:
            rows, inverse = self.forward_grouped(users)
            return rows[inverse]
        return self._features_forward(users, leave_out, history)

    def _features_forward(self, users: torch.Tensor, leave_out: torch.Tensor | None = None,
                          history: sp.csr_matrix | None = None) -> torch.Tensor:
        parts = []
        if self.use_features:
            parts += [self.gender_emb(self.gender[users]), self.age_emb(self.age[users]),
                      self.occ_emb(self.occupation[users])]
        if self.use_ids:
            # Users never seen in training keep a zero ID vector instead of an untrained one.
            parts.append(self.id_emb(users) * self.has_history[users, None])
        if self.history != "none":
            parts.append(self._pooled_history(users, leave_out, history))
        return F.normalize(self.net(torch.cat(parts, dim=1)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, user_tower: UserTower, item_tower: ItemTower):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower

    def n_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"user_tower": count(self.user_tower), "item_tower": count(self.item_tower),
                "total": count(self)}
