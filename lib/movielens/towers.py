"""User and item towers, built from the data's feature schema (``model.architecture: mlp``)
or from the history alone (``linear``; the sequence towers are ``lib.movielens.sequences``).

User tower inputs (each switchable): the declared user features (``lib.movielens.features``;
MovieLens: gender, age group, occupation), a user-ID embedding, and the user's training
history pooled over item embeddings (mean or recency-weighted). Item tower inputs: the
declared item features (MovieLens: genres multi-hot, release year), optional popularity
features, an item-ID embedding. Each tower: MLP (ReLU, dropout) then a linear output,
L2-normalised.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import Feature, dense_inputs, multi_hot


class ReLUByteDropout(nn.Module):
    """ReLU then dropout, as one masked multiply: relu(x) * keep / (1 - p) is x * s with
    s = 1 / (1 - p) where x > 0 and the unit is kept, else 0; s is computed outside the
    graph, so training costs one multiply forward and one backward (instead of the ReLU,
    the dropout multiply and both their backward passes). The dropout mask comes from random
    *bytes* (8 per 64-bit draw) instead of one float per element: on a 2-core CPU, drawing
    the floats was a third of a training step. The drop probability is rounded to a
    multiple of 1/256 (0.2 -> 51/256 = 0.1992). In eval mode (or p = 0): the ReLU."""

    def __init__(self, p: float):
        super().__init__()
        self.threshold = int(round(p * 256))
        self.p = self.threshold / 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return F.relu(x)
        n = x.numel()
        words = torch.randint(-2**63, 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        with torch.no_grad():
            scale = (keep & (x > 0)).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * scale


def mlp(in_dim: int, hidden: list[int], out_dim: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), ReLUByteDropout(dropout)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class FeatureInputs(nn.Module):
    """A tower's feature input, built from the feature schema (``lib.movielens.features``):
    an embedding per categorical feature, a mean of token embeddings per large-vocabulary
    multi-categorical feature, and the dense rest (multi-hot features, ``extra`` columns,
    standardised numeric features) as one matrix. ``fit``: rows seen in training (numeric
    statistics)."""

    def __init__(self, features: list[Feature], fit: np.ndarray, feature_dim: int,
                 extra: np.ndarray | None = None):
        super().__init__()
        self.categorical = [f for f in features if f.kind == "categorical"]
        self.bagged = [f for f in features if f.kind == "multi_categorical" and not multi_hot(f)]
        for i, f in enumerate(self.categorical):
            self.register_buffer(f"codes_{i}", torch.as_tensor(f.codes, dtype=torch.long))
        self.embeddings = nn.ModuleList(nn.Embedding(len(f.vocabulary), feature_dim) for f in self.categorical)
        self.bags = nn.ModuleList(nn.EmbeddingBag(len(f.vocabulary), feature_dim, mode="mean") for f in self.bagged)
        for i, f in enumerate(self.bagged):
            self.register_buffer(f"bag_indptr_{i}", torch.as_tensor(f.tokens.indptr, dtype=torch.long))
            self.register_buffer(f"bag_indices_{i}", torch.as_tensor(f.tokens.indices, dtype=torch.long))
        dense = dense_inputs(features, fit, extra)
        self.register_buffer("dense", torch.as_tensor(dense, dtype=torch.float32))
        self.dim = feature_dim * (len(self.categorical) + len(self.bagged)) + dense.shape[1]

    def codes(self, i: int) -> torch.Tensor:
        return getattr(self, f"codes_{i}")

    @property
    def categorical_only(self) -> bool:
        return not self.bagged and self.dense.shape[1] == 0

    @property
    def dense_only(self) -> bool:
        return not self.categorical and not self.bagged

    def _bag(self, i: int, rows: torch.Tensor | None) -> torch.Tensor:
        indptr, indices = getattr(self, f"bag_indptr_{i}"), getattr(self, f"bag_indices_{i}")
        if rows is None:
            rows = torch.arange(len(indptr) - 1, device=indptr.device)
        starts, ends = indptr[rows], indptr[rows + 1]
        lengths = ends - starts
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        flat = torch.repeat_interleave(starts - offsets, lengths) + torch.arange(int(lengths.sum()), device=rows.device)
        return self.bags[i](indices[flat], offsets)  # an empty bag gives a zero vector

    def forward(self, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The input parts of ``rows`` (every row if None): categorical, bagged, dense."""
        parts = [emb(self.codes(i) if rows is None else self.codes(i)[rows]) for i, emb in enumerate(self.embeddings)]
        parts += [self._bag(i, rows) for i in range(len(self.bags))]
        if self.dense.shape[1]:
            parts.append(self.dense if rows is None else self.dense[rows])
        return parts


class ItemTower(nn.Module):
    def __init__(self, n_items: int, features: list[Feature], fit: np.ndarray, cfg: dict,
                 popularity: np.ndarray | None = None):
        """``features``: the item features of the schema; ``fit``: items seen in training;
        ``popularity`` (n_items, k), optional: standardised training-period popularity
        features (see ``training.popularity_features``), dense columns after the multi-hot ones."""
        super().__init__()
        self.use_features = cfg["item_features"] and (bool(features) or popularity is not None)
        self.use_ids = cfg["id_embeddings"]
        in_dim = 0
        if self.use_features:
            self.features = FeatureInputs(features, fit, cfg["feature_dim"], extra=popularity)
            in_dim += self.features.dim
        if self.use_ids:
            self.id_emb = nn.Embedding(n_items, cfg["id_dim"])
            nn.init.normal_(self.id_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if in_dim == 0:
            raise ValueError("the item tower has no input: the data declares no item features "
                             "(or model.item_features is off); set model.id_embeddings: true")
        self.net = mlp(in_dim, cfg["hidden"], cfg["embedding_dim"], cfg["dropout"])
        # Dense features only: items with identical features get identical embeddings, so the
        # MLP runs once per distinct feature row (ML-1M: 1,479 rows for 3,416 movies) and the
        # result is gathered. Exact in eval mode; in training, such items share a dropout mask.
        self.grouped = self.use_features and not self.use_ids and self.features.dense_only
        if self.grouped:
            rows, inverse = np.unique(self.features.dense.numpy(), axis=0, return_inverse=True)
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
        parts = self.features(items) if self.use_features else []
        if self.use_ids:
            parts.append(self.id_emb.weight if items is None else self.id_emb(items))
        return F.normalize(self.net(torch.cat(parts, dim=1)), dim=-1)


class _WeightedRowSums(torch.autograd.Function):
    """``rows @ table`` for a sparse (B x n) CSR matrix ``rows`` and a dense (n x d) table,
    differentiable in the table. Forward: one ``embedding_bag`` (sum, per-sample weights)
    over the CSR rows; backward: the same over the rows of its transpose (CSC). Each output
    row is accumulated over its nonzeros in ascending column order, as ``torch.sparse.mm``
    does on the CPU (the same bits: tests check it), without the COO sort that made the
    sparse product ~15 ms forward and ~37 ms backward for an ML-1M interaction batch
    (1024 users, ~355k history entries) on one thread, against ~1 and ~3 ms here."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: sp.csr_matrix) -> torch.Tensor:
        ctx.rows = rows
        dev = table.device
        return F.embedding_bag(torch.as_tensor(rows.indices, dtype=torch.long, device=dev), table,
                               torch.as_tensor(rows.indptr[:-1], dtype=torch.long, device=dev), mode="sum",
                               per_sample_weights=torch.as_tensor(rows.data, device=dev))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cols = ctx.rows.tocsc()  # each column's rows in ascending order
        dev = grad.device
        grad_table = F.embedding_bag(torch.as_tensor(cols.indices, dtype=torch.long, device=dev), grad.contiguous(),
                                     torch.as_tensor(cols.indptr[:-1], dtype=torch.long, device=dev), mode="sum",
                                     per_sample_weights=torch.as_tensor(cols.data, device=dev))
        return grad_table, None


def pooled_history(embedding: nn.Embedding, hist: sp.csr_matrix, users: torch.Tensor,
                   leave_out: torch.Tensor | None, weights: sp.csr_matrix | None = None) -> torch.Tensor:
    """Weighted mean of the history items' embeddings (rows ``users`` of ``hist``).
    ``weights`` (len(users) x n_items) replaces the stored history rows (user-batched
    training feeds only the input part of a user's history there); ``leave_out``: each
    user's training target, taken out of its own history."""
    dev = embedding.weight.device
    rows = hist[users.cpu().numpy().copy()] if weights is None else sp.csr_matrix(weights)
    if not rows.has_canonical_format:  # sorted, distinct columns in each row
        rows = rows.copy()
        rows.sum_duplicates()
    total = _WeightedRowSums.apply(embedding.weight, rows)
    row_np = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    row_of = torch.as_tensor(row_np, dtype=torch.long, device=dev)
    values = torch.as_tensor(rows.data, device=dev)
    norm = torch.zeros(len(users), device=dev).index_add_(0, row_of, values)
    if leave_out is not None:
        # The training target must not be in its own history (it would be copied, not predicted).
        is_target = torch.as_tensor(rows.indices == leave_out.cpu().numpy()[row_np], device=dev)
        w_t = torch.zeros(len(users), device=dev).index_add_(0, row_of, values * is_target)
        total = total - w_t[:, None] * embedding(leave_out)
        norm = norm - w_t
    return total / norm.clamp_min(1e-6)[:, None]


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_items: int, features: list[Feature], fit: np.ndarray, cfg: dict):
        """``features``: the user features of the schema; ``fit``: users seen in training."""
        super().__init__()
        self.use_features = cfg["user_features"] and bool(features)
        self.use_ids = cfg["id_embeddings"]
        self.history = cfg["history"]
        in_dim = 0
        if self.use_features:
            self.features = FeatureInputs(features, fit, cfg["feature_dim"])
            in_dim += self.features.dim
        if self.use_ids:
            self.id_emb = nn.Embedding(n_users, cfg["id_dim"])
            nn.init.normal_(self.id_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if self.history != "none":
            self.hist_emb = nn.Embedding(n_items, cfg["id_dim"])
            nn.init.normal_(self.hist_emb.weight, std=0.01)
            in_dim += cfg["id_dim"]
        if in_dim == 0:
            raise ValueError("the user tower has no input: the data declares no user features (or "
                             "model.user_features is off); set model.id_embeddings: true or model.history")
        self.net = mlp(in_dim, cfg["hidden"], cfg["embedding_dim"], cfg["dropout"])
        # Set by set_history(): the weighted (n_users x n_items) history matrix.
        self.hist = None
        # Users with training interactions: only their ID vectors were trained (set_trained_users).
        self.register_buffer("trained_users", torch.ones(n_users, dtype=torch.bool))

    def set_history(self, weights: sp.csr_matrix) -> None:
        """``weights[u, i]`` > 0 for items in u's history (the training interactions; at
        test time, with ``evaluate.query_history: train+val``, the validation ones too)."""
        self.hist = weights.tocsr().astype(np.float32)

    def set_trained_users(self, mask: np.ndarray) -> None:
        """Users whose ID vector training updated (the others keep a zero ID vector)."""
        self.trained_users = torch.as_tensor(mask, dtype=torch.bool, device=self.trained_users.device)

    group_rows = True  # off on a GPU (Trainer): the distinct rows are a torch.unique, which waits for the device

    @property
    def grouped(self) -> bool:
        """Categorical features only (no IDs, no history, no dense feature): users with equal
        codes share one embedding, computed once (unless the key would overflow)."""
        if not (self.group_rows and self.use_features and not self.use_ids and self.history == "none" and self.features.categorical_only):
            return False
        return float(np.prod([float(e.num_embeddings) for e in self.features.embeddings])) < 2.0 ** 62

    def forward_grouped(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features only: run the MLP once per distinct combination of categorical codes in
        the batch (ML-1M: 241 of gender x age x occupation in all). Returns (embeddings of
        the distinct rows, row index of each user). See ItemTower for the dropout caveat."""
        key = torch.zeros_like(users)
        for i, emb in enumerate(self.features.embeddings):  # mixed radix, first feature most significant
            key = key * emb.num_embeddings + self.features.codes(i)[users]
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
        parts = self.features(users) if self.use_features else []
        if self.use_ids:
            # Users never seen in training keep a zero ID vector instead of an untrained one.
            parts.append(self.id_emb(users) * self.trained_users[users, None])
        if self.history != "none":
            parts.append(pooled_history(self.hist_emb, self.hist, users, leave_out, history))
        return F.normalize(self.net(torch.cat(parts, dim=1)), dim=-1)


class LinearUserTower(nn.Module):
    """The Mult-DAE family without its hidden layer (Liang et al., WWW 2018): the user vector
    is the weighted mean of the history items' input embeddings, and a score is its dot
    product with the item's output embedding plus the item's bias, so the model is a
    rank-``embedding_dim`` linear item-item map (EASE is the full-rank one). The input
    dropout is user batching's held-out targets (``train.target_fraction``, re-drawn each
    epoch), predicted from the rest through a multinomial likelihood. Its vectors end with
    a 1, the item vectors with the bias, so a dot product (FAISS) gives the score."""

    grouped = False

    def __init__(self, n_users: int, n_items: int, cfg: dict):
        super().__init__()
        self.history = cfg["history"]
        self.hist_emb = nn.Embedding(n_items, cfg["embedding_dim"])
        nn.init.normal_(self.hist_emb.weight, std=0.01)
        self.hist = None
        self.register_buffer("trained_users", torch.ones(n_users, dtype=torch.bool))

    set_history = UserTower.set_history

    def set_trained_users(self, mask: np.ndarray) -> None:
        """Kept for the user towers' common interface: a linear tower has no user ID vectors."""

    def forward(self, users: torch.Tensor, leave_out: torch.Tensor | None = None,
                history: sp.csr_matrix | None = None) -> torch.Tensor:
        pooled = pooled_history(self.hist_emb, self.hist, users, leave_out, history)
        return torch.cat([pooled, pooled.new_ones(len(users), 1)], dim=1)


class LinearItemTower(nn.Module):
    """Item output embeddings and biases, as (n_items, embedding_dim + 1) vectors."""

    grouped = False

    def __init__(self, n_items: int, cfg: dict):
        super().__init__()
        self.out_emb = nn.Embedding(n_items, cfg["embedding_dim"])
        nn.init.normal_(self.out_emb.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        vec = torch.cat([self.out_emb.weight, self.bias[:, None]], dim=1)
        return vec if items is None else vec[items]


class TwoTower(nn.Module):
    def __init__(self, user_tower: UserTower, item_tower: ItemTower):
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower

    def n_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"user_tower": count(self.user_tower), "item_tower": count(self.item_tower),
                "total": count(self)}
