"""Two-tower training on MovieLens: one loop, read top to bottom in ``Trainer.fit``.

The pieces it is made of, each small and tested on its own:
- batch sources: ``InteractionBatches`` (one positive (user, item) per row, shuffled each
  epoch), ``UserBatches`` (all of a user's held-out targets per row; the input/target
  split of each history is drawn anew each epoch, ``split_user_history``) and
  ``sequences.SequenceBatches`` (users whose time-ordered histories a sequence tower reads);
- losses: ``InteractionLoss`` (in-batch, explicit, mixed or full softmax; a general path
  and a grouped path for features-only towers, which computes the same loss faster) and
  ``MultinomialLoss`` (user batches: a softmax over the whole catalog per user) and
  ``sequences.NextItemLoss`` (a softmax over the catalog at every position of a history);
- ``EarlyStopping``: the monitored value, patience, min_delta, and the best state.
Every random draw comes from generators made once per trainer from the seed (numpy: batch
order, target splits; torch on the training device: negatives; torch on the CPU: hard-negative
picks) plus torch's global generator (initial weights, dropout), so the same params and seed
give the same model on a given device. A step reads nothing back from the device: the epoch
sums the losses there and reads the sum once.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.device import pick_device
from ..core.params import ParamsError
from . import losses
from .data import PreparedData
from .sequences import SEQUENTIAL, NextItemLoss, SequenceBatches, SequenceUserTower, SharedItemTower, padded_histories
from .towers import ItemTower, LinearItemTower, LinearUserTower, TwoTower, UserTower


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class NegativeSampler:
    """Uniform negatives among the items a user has not seen in training, drawn on the
    training device: exact and without rejection, so a step needs no host round trip.

    For a user whose seen items, sorted, are s_0 < s_1 < ..., the r-th unseen item (r drawn
    uniformly in [0, n_items - n_seen)) is r + #{j : s_j - j <= r} (s_j - j counts the unseen
    items below s_j). Those counts are one ``torch.searchsorted`` into a single sorted key
    array ``user * (n_items + 1) + (s_j - j)`` built from the CSR rows: O(nnz) memory at any
    catalog size and no sort. Up to ``DENSE_MAX_CELLS`` users x items the same map is also
    kept as a (user, r) -> item table, one lookup per draw (both give the same items)."""

    def __init__(self, seen: sp.csr_matrix, device: torch.device | str = "cpu"):
        seen = sp.csr_matrix(seen, copy=True)
        seen.sum_duplicates()  # canonical: sorted, distinct column indices per row
        seen.eliminate_zeros()
        n_users, self.n_items = seen.shape
        counts = np.diff(seen.indptr).astype(np.int64)
        full = np.flatnonzero(counts >= self.n_items)
        if len(full):
            raise ValueError(f"user row {full[0]} has seen all {self.n_items} items in training: "
                             f"there is no negative to sample for it")
        row = np.repeat(np.arange(n_users, dtype=np.int64), counts)
        start = seen.indptr[:-1].astype(np.int64)
        rank = np.arange(seen.nnz, dtype=np.int64) - start[row]
        keys = row * (self.n_items + 1) + (seen.indices.astype(np.int64) - rank)
        self.keys = torch.as_tensor(keys, device=device)
        self.start = torch.as_tensor(start, device=device)
        self.n_unseen = torch.as_tensor(self.n_items - counts, device=device)
        # Small enough: the same map r -> item as a table, (user, r) -> the r-th unseen item,
        # one lookup per draw instead of a binary search over every key (ML-1M: 41 MB, and
        # about 0.5 GB of index arrays while it is built).
        self.unseen = None
        if self.dense_table and n_users * self.n_items <= self.DENSE_MAX_CELLS:
            dtype = np.int16 if self.n_items <= np.iinfo(np.int16).max else np.int32
            free_rows, free_items = np.nonzero(~(seen.toarray() > 0))  # row-major: each row's items ascending
            free_start = np.concatenate([[0], np.cumsum(self.n_items - counts)[:-1]])
            table = np.zeros((n_users, self.n_items), dtype)
            table[free_rows, np.arange(len(free_rows)) - free_start[free_rows]] = free_items
            self.unseen = torch.as_tensor(table, device=device)

    DENSE_MAX_CELLS = 30_000_000  # ML-1M: 20.6M cells
    dense_table = True  # tests turn it off to check that both give the same items

    def sample(self, users, n: int, generator: torch.Generator) -> torch.Tensor:
        """(len(users), n) item indices, each uniform over that user's unseen items (drawn
        with replacement), from ``generator`` (a generator on the sampler's device)."""
        dev = self.keys.device
        u = torch.as_tensor(users, device=dev).to(torch.int64)[:, None].expand(-1, n)
        n_unseen = self.n_unseen[u]
        r = (torch.rand(u.shape, generator=generator, dtype=torch.float64, device=dev) * n_unseen).to(torch.int64)
        r = torch.minimum(r, n_unseen - 1)  # a float product that rounded up to n_unseen
        if self.unseen is not None:
            return self.unseen[u, r].to(torch.int64)
        return r + (torch.searchsorted(self.keys, u * (self.n_items + 1) + r, right=True) - self.start[u])


def history_weights(data: PreparedData, mode: str, half_life_days: float) -> sp.csr_matrix:
    """User x item weights over *training* interactions only (no val/test leakage)."""
    tr = data.train
    if mode == "mean":
        w = np.ones(len(tr), np.float32)
    elif mode == "recency":
        last = tr.groupby("user")["timestamp"].transform("max").to_numpy()
        age_days = (last - tr["timestamp"].to_numpy()) / 86400.0
        w = (0.5 ** (age_days / half_life_days)).astype(np.float32)
    else:
        raise ValueError(mode)
    return sp.csr_matrix((w, (tr["user"].to_numpy(), tr["item"].to_numpy())),
                         shape=(data.n_users, data.n_items))


def popularity_features(data: PreparedData, window_days: float) -> np.ndarray:
    """(n_items, 2): log(1 + training interactions) over the whole training period and over
    its last ``window_days``, each standardised. Training split only: nothing from the
    validation or test periods (tests check it)."""
    tr = data.train
    ts = tr["timestamp"].to_numpy()
    recent = ts >= ts.max() - window_days * 86400.0
    cols = [np.log1p(np.bincount(tr["item"].to_numpy()[mask], minlength=data.n_items)).astype(np.float64)
            for mask in (np.ones(len(tr), bool), recent)]
    return np.stack([(c - c.mean()) / (c.std() + 1e-6) for c in cols], axis=1).astype(np.float32)


def build_model(data: PreparedData, model_cfg: dict) -> TwoTower:
    """The towers of ``model.architecture``, reading ``data``'s training history."""
    architecture = model_cfg["architecture"]
    if architecture in SEQUENTIAL:
        item = SharedItemTower(data.n_items, model_cfg)
        user = SequenceUserTower(data.n_users, item.codes, model_cfg)
    elif architecture == "linear":
        user, item = LinearUserTower(data.n_users, data.n_items, model_cfg), LinearItemTower(data.n_items, model_cfg)
    else:
        seen_users = np.zeros(data.n_users, bool)
        seen_users[data.train["user"].to_numpy()] = True
        seen_items = np.zeros(data.n_items, bool)
        seen_items[data.train["item"].to_numpy()] = True
        user = UserTower(data.n_users, data.n_items, data.user_features, seen_users, model_cfg)
        user.set_trained_users(seen_users)
        pop = (popularity_features(data, model_cfg["popularity_window_days"])
               if model_cfg["item_popularity"] else None)
        item = ItemTower(data.n_items, data.item_features, seen_items, model_cfg, popularity=pop)
    set_query_history(user, data, model_cfg)
    return TwoTower(user, item)


def set_query_history(tower, data: PreparedData, model_cfg: dict) -> None:
    """Give a user tower the history its queries read: ``data``'s training split (at test
    time with ``evaluate.query_history: train+val``, that of ``through_validation``)."""
    if tower.history == "sequence":
        tower.set_histories(padded_histories(data.train, data.n_users, data.n_items,
                                             model_cfg["max_sequence_length"])[0])
    elif tower.history != "none":
        tower.set_history(history_weights(data, tower.history, model_cfg["history_half_life_days"]))


def loss_weights(timestamps: np.ndarray, end: float, half_life_days: float | None) -> np.ndarray:
    """The loss weight of training targets at ``timestamps``: 0.5 ** (age / half-life), age in
    days to ``end`` (the end of the training period); 1 without a half-life."""
    if half_life_days is None:
        return np.ones(len(timestamps), np.float32)
    return (0.5 ** ((end - np.asarray(timestamps, np.float64)) / 86400.0 / half_life_days)).astype(np.float32)


# -- batch sources ------------------------------------------------------------------------------
class InteractionBatches:
    """(users, items) batches of ``batch_size`` training positives, in a new random order
    each epoch; the ragged last batch is dropped (one smaller batch would weigh as much as a
    full one). The pairs live on the training device: an epoch moves one permutation there,
    a step moves nothing."""

    def __init__(self, users: np.ndarray, items: np.ndarray, batch_size: int, rng: np.random.Generator,
                 device: torch.device | str = "cpu"):
        self.users = torch.as_tensor(users, dtype=torch.int64, device=device)
        self.items = torch.as_tensor(items, dtype=torch.int64, device=device)
        self.batch_size, self.rng = batch_size, rng
        n = len(users)
        self.starts = range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size)

    def __len__(self) -> int:
        return len(self.starts)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(self.rng.permutation(len(self.users)), device=self.users.device)
        for s in self.starts:
            idx = order[s:s + self.batch_size]
            yield self.users[idx], self.items[idx]


def split_user_history(hist: sp.csr_matrix, nnz_rating: np.ndarray, nnz_timestamp: np.ndarray,
                       target_fraction: float, selection: str, positive_min_rating: int,
                       has_input_history: bool, rng: np.random.Generator,
                       target_weights: np.ndarray | None = None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split every user's training items into an input part (the history the user tower
    sees) and a target part (``target_fraction``): at random (``selection: random``,
    re-drawn at each call) or each user's most recent items (``latest``: the task the test
    split poses, the same split every epoch). Users with >= 2 items keep at least one
    input and one target. The targets are never in the input: the tower must predict
    them, not copy them. ``nnz_rating``/``nnz_timestamp`` are aligned with ``hist.data``;
    targets rated below ``positive_min_rating`` are dropped. Without an input history
    (``has_input_history`` False) every item is a target. The targets' values are
    ``target_weights`` (aligned with ``hist.data``; a loss half-life), else 1."""
    hist = hist.tocsr()
    counts = np.diff(hist.indptr)
    row = np.repeat(np.arange(hist.shape[0]), counts)
    if selection == "latest":
        order = np.lexsort((nnz_timestamp, row))
        rank = np.empty(hist.nnz, np.int64)
        rank[order] = np.arange(hist.nnz) - hist.indptr[row[order]]
        n_target = np.clip(np.round(target_fraction * counts), 1, np.maximum(counts - 1, 1))
        is_target = rank >= (counts - n_target)[row]
    else:
        is_target = rng.random(hist.nnz) < target_fraction
        first = hist.indptr[:-1][counts >= 2]
        is_target[first] = False
        n_t = np.bincount(row[is_target], minlength=hist.shape[0])
        need = np.flatnonzero((n_t == 0) & (counts >= 2))
        is_target[hist.indptr[need] + 1] = True
    if not has_input_history:
        is_target[:] = True  # no input history to leak into: every item is a target
    ratings_ok = nnz_rating >= positive_min_rating
    # copies of indices/indptr: eliminate_zeros() below works in place and must not touch `hist`
    inputs = sp.csr_matrix((np.where(is_target, 0, hist.data), hist.indices.copy(), hist.indptr.copy()), shape=hist.shape)
    value = (is_target & ratings_ok).astype(np.float32)
    if target_weights is not None:
        value *= target_weights
    targets = sp.csr_matrix((value, hist.indices.copy(), hist.indptr.copy()), shape=hist.shape)
    inputs.eliminate_zeros()
    targets.eliminate_zeros()
    return inputs, targets


class UserBatches:
    """(users, inputs, targets) batches of ``batch_size`` users with training items: each
    epoch draws a new input/target split (``split``, a function of the generator), then a
    new user order."""

    def __init__(self, active_users: np.ndarray, batch_size: int, split, rng: np.random.Generator):
        self.active, self.batch_size, self.split, self.rng = active_users, batch_size, split, rng

    def __len__(self) -> int:
        return math.ceil(len(self.active) / self.batch_size)

    def epoch(self) -> Iterator[tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]]:
        inputs, targets = self.split(self.rng)
        order = self.rng.permutation(self.active)
        for s in range(0, len(order), self.batch_size):
            yield order[s:s + self.batch_size], inputs, targets


# -- losses -----------------------------------------------------------------------------------------
def _mixed(terms: dict, cfg: dict) -> torch.Tensor:
    """The loss from its terms: the mixed loss weighs explicit against in-batch."""
    if cfg["kind"] == "mixed":
        w = cfg["explicit_weight"]
        return w * terms["explicit"] + (1 - w) * terms["in_batch"]
    (loss,) = terms.values()
    return loss


class InteractionLoss:
    """The loss of a batch of (user, positive item) pairs, by ``loss.kind``: ``in_batch``
    (the batch's other positives are the negatives, optional logQ correction and removal
    of accidental hits), ``explicit`` (sampled negatives, plus optional mined hard
    negatives), ``mixed`` (``explicit_weight`` of explicit + the rest in-batch) or
    ``full_softmax`` (the whole catalog). The item tower embeds the whole catalog once per
    step (a few thousand items: cheap and exact), and every logit is read from it; the
    in-batch loss, whose logits are all against batch items, embeds only those."""

    def __init__(self, model: TwoTower, cfg: dict, seen: sp.csr_matrix, log_q: torch.Tensor,
                 device: torch.device, generator: torch.Generator):
        self.model, self.cfg, self.seen, self.log_q, self.device = model, cfg, seen, log_q, device
        self.generator = generator  # hard-negative picks
        self.seen_mask = None  # the dense training-item mask (``_seen_rows``), once needed

    def __call__(self, users, items, negatives: torch.Tensor | None, leave_out_target: bool = True,
                 batch_items: torch.Tensor | None = None, first_row: int = 0) -> torch.Tensor:
        """``users``, ``items``: (b,) index arrays or tensors; ``negatives``: (b, n) or None.
        ``batch_items``: the positives of the whole (global) batch when these b pairs are its
        rows ``first_row ...`` (data-parallel training): the in-batch negatives are all of them."""
        u_t = torch.as_tensor(users, device=self.device)
        i_t = torch.as_tensor(items, device=self.device)
        batch_i = i_t if batch_items is None else torch.as_tensor(batch_items, device=self.device)
        if self.model.user_tower.grouped and self.model.item_tower.grouped and self.cfg["kind"] != "full_softmax":
            return self.grouped(u_t, i_t, negatives, batch_i, first_row)
        return self.general(u_t, i_t, negatives, leave_out_target, batch_i, first_row)

    def _seen_rows(self, u_t: torch.Tensor) -> torch.Tensor:
        """(B, n_items) bool: the batch users' training items. Rows of a users x items mask kept
        on the device when it is small (``NegativeSampler.DENSE_MAX_CELLS``; ML-1M: 21 MB),
        built on first use; else densified on the host at each call. Both give the same mask."""
        n_users, n_items = self.seen.shape
        if self.seen_mask is None and self.dense_seen_mask and n_users * n_items <= NegativeSampler.DENSE_MAX_CELLS:
            coo = self.seen.tocoo()
            keep = coo.data > 0
            mask = torch.zeros((n_users, n_items), dtype=torch.bool, device=self.device)
            mask[torch.as_tensor(coo.row[keep], dtype=torch.long, device=self.device),
                 torch.as_tensor(coo.col[keep], dtype=torch.long, device=self.device)] = True
            self.seen_mask = mask
        if self.seen_mask is not None:
            return self.seen_mask[u_t]
        return torch.as_tensor(self.seen[u_t.cpu().numpy()].toarray() > 0, device=self.device)

    dense_seen_mask = True  # tests turn it off to check that both give the same rows
    # in-batch loss: embed only the batch's items (off on a GPU, Trainer: the distinct items are
    # a torch.unique, which waits for the device, and the catalog costs it nothing)
    batch_items_only = True

    def general(self, u_t, i_t, negatives, leave_out_target, batch_i, first_row) -> torch.Tensor:
        cfg, tower = self.cfg, self.model.user_tower
        user_rows = None
        if tower.grouped:
            user_distinct, user_rows = tower.forward_grouped(u_t)
            user_vec = user_distinct[user_rows]
        else:
            user_vec = tower(u_t, leave_out=i_t if leave_out_target else None)
        temp, kind = cfg["temperature"], cfg["kind"]
        # the in-batch loss alone reads only batch items: then the tower embeds the batch's distinct
        # items, not the catalog (ML-1M, B = 1024: about 750 of 3,416 items)
        all_items = None if kind == "in_batch" and self.batch_items_only else self.model.item_tower()
        terms = {}
        if kind in ("explicit", "mixed"):
            pos = F.embedding(i_t, all_items)
            neg_ids = torch.as_tensor(negatives, device=self.device)
            if cfg["num_hard_negatives"] > 0:
                with torch.no_grad():
                    scores = user_vec @ all_items.T
                neg_ids = torch.cat([neg_ids, self.hard_negatives(u_t, scores)], dim=1)
            terms["explicit"] = losses.sampled_softmax(user_vec, pos, F.embedding(neg_ids, all_items), temp)
        if kind in ("in_batch", "mixed"):
            if all_items is None:  # each distinct item embedded once: one dropout mask per item, as over the catalog
                items, col_of = torch.unique(batch_i, return_inverse=True)
                columns = self.model.item_tower(items)[col_of]
            else:
                columns = F.embedding(batch_i, all_items)
            terms["in_batch"] = losses.in_batch_softmax(
                user_vec if user_rows is None else user_distinct, columns, temp,
                item_ids=batch_i, user_rows=user_rows, log_q=self.log_q[batch_i] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"], first_row=first_row)
        if kind == "full_softmax":
            mask = None
            if cfg["remove_accidental_hits"]:
                mask = self._seen_rows(u_t)
            terms["full"] = losses.full_softmax(user_vec, all_items, i_t, temp, mask)
        return _mixed(terms, cfg)

    def grouped(self, u_t, i_t, negatives, batch_i, first_row) -> torch.Tensor:
        """Features-only towers: every logit the loss needs is an entry of one small
        (distinct users x distinct item feature rows) score matrix, so nothing else is
        multiplied, and the in-batch softmax runs over distinct users x distinct items
        (``losses.in_batch_softmax_distinct``). Same loss as ``general`` (tests check it),
        several times faster on CPU."""
        cfg = self.cfg
        user_distinct, rows = self.model.user_tower.forward_grouped(u_t)
        item_tower = self.model.item_tower
        scores = user_distinct @ item_tower.group_embeddings().T / cfg["temperature"]
        group = item_tower.item_group
        terms = {}
        if cfg["kind"] in ("explicit", "mixed"):
            neg_ids = torch.as_tensor(negatives, device=self.device)
            if cfg["num_hard_negatives"] > 0:
                # (distinct rows x items) first, then one row per user: the same entries, fewer gathered
                neg_ids = torch.cat([neg_ids, self.hard_negatives(u_t, scores.detach()[:, group][rows])], dim=1)
            terms["explicit"] = losses.sampled_softmax_logits(scores[rows, group[i_t]],
                                                              scores[rows[:, None], group[neg_ids]])
        if cfg["kind"] in ("in_batch", "mixed"):
            items, col_of, count = torch.unique(batch_i, return_inverse=True, return_counts=True)
            col_of = col_of[first_row:first_row + len(i_t)]
            terms["in_batch"] = losses.in_batch_softmax_distinct(
                scores[:, group[items]], rows, col_of, count,
                col_log_q=self.log_q[items] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"])
        return _mixed(terms, cfg)

    def hard_negatives(self, u_t: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Items the current model ranks highest that the user never saw in training:
        ``num_hard_negatives`` picked at random from the top ``hard_negative_pool``.
        ``scores`` (B, n_items), outside the graph, is overwritten (the seen items masked)."""
        with torch.no_grad():
            scores = scores.masked_fill_(self._seen_rows(u_t), float("-inf"))
            k = self.cfg["hard_negative_pool"]
            if scores.device.type == "cpu":
                # numpy's introselect: the top k, as torch.topk finds them (in another order, the
                # pick is uniform over them either way; equal scores at the k-th place may be
                # taken otherwise), about 2.5x faster on a CPU
                pool = torch.from_numpy(np.argpartition(scores.neg_().numpy(), k - 1, axis=1)[:, :k])
            else:
                pool = torch.topk(scores, k, dim=1).indices
            pick = torch.randint(0, pool.shape[1], (len(u_t), self.cfg["num_hard_negatives"]),
                                 generator=self.generator, device="cpu").to(scores.device)
            return torch.gather(pool, 1, pick)


class MultinomialLoss:
    """User batches: the multinomial log-likelihood of each user's targets under a softmax
    over the whole catalog, averaged over the user's targets (each weighted by its value in
    ``targets``: 1, or its loss half-life weight); with
    ``remove_accidental_hits`` the user's input items are masked out of the softmax (they
    are excluded at evaluation too)."""

    def __init__(self, model: TwoTower, cfg: dict, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device

    def __call__(self, users: np.ndarray, inputs: sp.csr_matrix, targets: sp.csr_matrix) -> torch.Tensor:
        tower = self.model.user_tower
        u_t = torch.as_tensor(users, device=self.device)
        user_vec = tower(u_t, history=inputs[users] if tower.history != "none" else None)
        # the division and the mask in place (the product is used only here): same values, fewer passes
        logits = (user_vec @ self.model.item_tower().T).div_(self.cfg["temperature"])
        if self.cfg["remove_accidental_hits"]:
            mask = torch.as_tensor(inputs[users].toarray() > 0, device=self.device)
            logits = logits.masked_fill_(mask, float("-inf"))
        tgt = torch.as_tensor(targets[users].toarray(), device=self.device)  # 1, or a target's loss weight
        n = (tgt > 0).sum(1)
        keep = n > 0
        logp = torch.log_softmax(logits[keep], dim=1)
        w = tgt[keep]
        return -(torch.where(w > 0, w * logp, 0.0).sum(1) / n[keep]).mean()


# -- early stopping ---------------------------------------------------------------------------------
class EarlyStopping:
    """Stop after ``patience`` epochs without improvement of ``metric`` (``val_loss``: lower
    is better; a validation ranking metric: higher is better) by more than ``min_delta``;
    remembers the best epoch and a copy of the model's state then."""

    def __init__(self, metric: str, patience: int, min_delta: float):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.best, self.best_epoch, self.best_state, self.bad_epochs = math.inf, 0, None, 0

    def update(self, epoch: int, row: dict, model: torch.nn.Module) -> bool:
        """Record an epoch's row; True if it improved on the best so far."""
        value = row[self.metric] if self.metric == "val_loss" else -row[self.metric]
        improved = value < self.best - max(self.min_delta, 1e-9)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def restore_best(self, model: torch.nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


# -- the trainer --------------------------------------------------------------------------------------
class _LossOfBatch(torch.nn.Module):
    """The model with the loss of a batch as its forward: what DistributedDataParallel wraps
    (its gradient averaging hooks on the forward that produced the loss)."""

    def __init__(self, model: TwoTower, loss_of_batch):
        super().__init__()
        self.model = model
        self.loss_of_batch = loss_of_batch

    def forward(self, batch) -> torch.Tensor:
        return self.loss_of_batch(batch)


@dataclass
class TrainResult:
    model: TwoTower
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_epoch: int = 0
    seconds: float = 0.0
    steps: int = 0


def _aligned_with(matrix: sp.csr_matrix, df, column: str, dtype) -> np.ndarray:
    """``df[column]`` of each stored entry of ``matrix`` (canonical CSR of the same (user,
    item) pairs), aligned with ``matrix.data``."""
    m = sp.csr_matrix((df[column].to_numpy(dtype), (df["user"].to_numpy(), df["item"].to_numpy())),
                      shape=matrix.shape)
    m.sort_indices()
    return m.data


class Trainer:
    """Builds the model, its batch source, loss and optimizer from the params sections;
    ``fit`` trains it."""

    def __init__(self, data: PreparedData, model_cfg: dict, loss_cfg: dict, train_cfg: dict,
                 seed: int, device: str = "cpu", world: tuple[int, int] = (0, 1)):
        """``world``: (rank, size) of this process in a data-parallel run (``lib.movielens.
        distributed``; torch.distributed initialised): each process trains on rows ``rank``
        x batch_size/size ... of every global batch, and DistributedDataParallel averages the
        gradients."""
        self.data, self.loss_cfg, self.train_cfg, self.seed = data, loss_cfg, train_cfg, seed
        self.rank, self.world_size = world
        if self.world_size > 1:
            if train_cfg["batching"] != "interactions":
                raise ParamsError("train.processes > 1 needs train.batching: interactions")
            if train_cfg["batch_size"] % self.world_size:
                raise ParamsError(f"train.batch_size ({train_cfg['batch_size']}) must be a multiple of "
                                  f"train.processes ({self.world_size}): each process takes an equal share")
        self.device = pick_device(device)
        if self.world_size > 1 and self.device.type == "cuda":  # one GPU per process of this machine
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)) % torch.cuda.device_count())
        if loss_cfg["num_hard_negatives"] > 0 and loss_cfg["hard_negative_pool"] > data.n_items:
            raise ParamsError(f"loss.hard_negative_pool ({loss_cfg['hard_negative_pool']}) is larger than the "
                              f"catalog ({data.n_items} items)")
        seed_everything(seed)
        self.model = build_model(data, model_cfg).to(self.device)
        if self.device.type == "cuda":
            # the grouped path saves FLOPs on a CPU; on a GPU its torch.unique would be a host
            # round trip per step, and the full batch costs nothing (same loss: tests check it)
            self.model.user_tower.group_rows = False
        self.rng = np.random.default_rng(seed)                   # batch order, target splits
        self.generator = torch.Generator().manual_seed(seed)     # hard-negative picks
        # negatives, drawn on the training device
        self.sample_generator = torch.Generator(device=self.device).manual_seed(seed)
        self.seen = data.matrix("train")
        if loss_cfg["num_hard_negatives"] > 0:
            n_unseen = data.n_items - np.diff(self.seen.indptr)
            short = np.flatnonzero(n_unseen < loss_cfg["hard_negative_pool"])
            if len(short):  # its pool would hold training items
                raise ParamsError(f"loss.hard_negative_pool ({loss_cfg['hard_negative_pool']}) is larger than the "
                                  f"{n_unseen[short[0]]} items user row {short[0]} has not seen in training")
        self.sampler = (NegativeSampler(self.seen, self.device) if loss_cfg["kind"] in ("explicit", "mixed")
                        else None)  # the other losses never sample
        min_r = data.rating_threshold(train_cfg["positive_min_rating"])
        tr = data.train[data.train["rating"] >= min_r]
        # copies: pandas hands out read-only views, which torch.as_tensor warns about at every step
        self.train_users, self.train_items = tr["user"].to_numpy(copy=True), tr["item"].to_numpy(copy=True)
        va = data.val[data.val["rating"] >= min_r]
        self.val_users, self.val_items = va["user"].to_numpy(copy=True), va["item"].to_numpy(copy=True)
        counts = np.bincount(self.train_items, minlength=data.n_items).astype(np.float64)
        q = (counts + 1.0) / (counts.sum() + data.n_items)  # candidate sampling probability
        log_q = torch.as_tensor(np.log(q), dtype=torch.float32, device=self.device)
        self.loss = InteractionLoss(self.model, loss_cfg, self.seen, log_q, self.device, self.generator)
        if self.device.type == "cuda":
            self.loss.batch_items_only = False  # see InteractionLoss.batch_items_only
        self.user_loss = MultinomialLoss(self.model, loss_cfg, self.device)
        end = float(data.train["timestamp"].max()) if len(data.train) else 0.0  # the end of the training period
        active = np.flatnonzero(np.diff(self.seen.indptr) > 0)
        if train_cfg["batching"] == "users":
            self.nnz_rating = _aligned_with(self.seen, data.train, "rating", np.float32)
            self.nnz_timestamp = _aligned_with(self.seen, data.train, "timestamp", np.float64)
            self.nnz_weight = (loss_weights(self.nnz_timestamp, end, loss_cfg["half_life_days"])
                               if loss_cfg["half_life_days"] is not None else None)
            self.batches = UserBatches(active, train_cfg["user_batch_size"], self.split_user_history, self.rng)
        elif train_cfg["batching"] == "sequences":
            # each user's last L + 1 training items: L inputs, the next item the target at each
            # position; a target's weight is its loss half-life weight, 0 below positive_min_rating
            tr_all = data.train
            weight = loss_weights(tr_all["timestamp"].to_numpy(), end, loss_cfg["half_life_days"])
            weight = weight * (tr_all["rating"].to_numpy() >= min_r)
            windows, weights = padded_histories(tr_all, data.n_users, data.n_items,
                                                model_cfg["max_sequence_length"] + 1, weight)
            self.sequence_loss = NextItemLoss(self.model, loss_cfg, windows, weights, self.device,
                                              next_items=train_cfg["next_items"])
            self.batches = SequenceBatches(active, train_cfg["user_batch_size"], self.rng)
        else:
            self.batches = InteractionBatches(self.train_users, self.train_items, train_cfg["batch_size"], self.rng,
                                              self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg["learning_rate"],
                                          weight_decay=train_cfg["weight_decay"],
                                          fused=True)  # one kernel over all parameters; same update rule
        self.parallel = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.parallel = DistributedDataParallel(_LossOfBatch(self.model, self.local_loss),
                                                    device_ids=[self.device.index] if self.device.type == "cuda" else None)

    @property
    def input_history(self) -> sp.csr_matrix:
        """The weighted training history the user tower reads (the binary seen matrix when
        the tower reads none)."""
        hist = self.model.user_tower.hist
        return hist if hist is not None else self.seen

    def split_user_history(self, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        t = self.train_cfg
        return split_user_history(self.input_history, self.nnz_rating, self.nnz_timestamp, t["target_fraction"],
                                  t["target_selection"], self.data.rating_threshold(t["positive_min_rating"]),
                                  self.model.user_tower.history != "none", rng, self.nnz_weight)

    def negatives(self, users, generator: torch.Generator) -> torch.Tensor | None:
        """The batch's sampled negatives (explicit and mixed losses), from ``generator``."""
        if self.sampler is not None:
            return self.sampler.sample(users, self.loss_cfg["num_negatives"], generator)
        return None

    def batch_loss(self, batch) -> torch.Tensor:
        """The training loss of a batch (in a data-parallel run, of this process's rows,
        through DistributedDataParallel, which averages the gradients in backward)."""
        if self.parallel is not None:
            return self.parallel(batch)
        return self.local_loss(batch)

    def local_loss(self, batch) -> torch.Tensor:
        if self.train_cfg["batching"] == "users":
            return self.user_loss(*batch)
        if self.train_cfg["batching"] == "sequences":
            return self.sequence_loss(batch)
        users, items = batch
        negatives = self.negatives(users, self.sample_generator)
        if self.world_size == 1:
            return self.loss(users, items, negatives)
        # every process draws the global batch's negatives from the same generator and keeps its
        # rows, so the draws are those of a single-process run; the in-batch negatives are the
        # global batch's positives (each process embeds the whole catalog: nothing to gather)
        b = len(users) // self.world_size
        rows = slice(self.rank * b, (self.rank + 1) * b)
        return self.loss(users[rows], items[rows], None if negatives is None else negatives[rows],
                         batch_items=items, first_row=self.rank * b)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimizer step; the detached loss stays on the device (reading it back would
        wait for the device at every step: the epoch reads the sum once)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The training loss on the validation positives: for user batches, inputs = the
        whole training history and targets = the validation positives; for interaction
        batches, fixed negatives and batch order (seeded apart from training); for sequences,
        the user vector after the whole training history against the validation positives."""
        if len(self.val_users) == 0:
            return float("nan")
        self.model.eval()
        if self.train_cfg["batching"] in ("users", "sequences"):
            val = sp.csr_matrix((np.ones(len(self.val_users), np.float32), (self.val_users, self.val_items)),
                                shape=self.seen.shape)
            users = np.unique(self.val_users)
            total = sum(float(self.user_loss(users[s:s + 512], self.input_history, val)) * len(users[s:s + 512])
                        for s in range(0, len(users), 512))
            return total / len(users)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + 10_000)
        bs = self.train_cfg["batch_size"]
        total, n = torch.zeros((), device=self.device), 0
        for s in range(0, len(self.val_users), bs):
            u, i = self.val_users[s:s + bs], self.val_items[s:s + bs]
            total += self.loss(u, i, self.negatives(u, generator), leave_out_target=False) * len(u)
            n += len(u)
        return float(total) / n

    def fit(self, on_epoch=None, progress: bool = True) -> TrainResult:
        """Train until early stopping or ``max_epochs``; ``on_epoch(model)`` returns extra
        validation figures for the epoch's row (e.g. NDCG@10). Ends with the best epoch's
        weights, in eval mode."""
        cfg = self.train_cfg
        stopping = EarlyStopping(cfg["early_stopping_metric"], cfg["patience"], cfg["min_delta"])
        result = TrainResult(self.model)
        start = time.perf_counter()
        for epoch in range(1, cfg["max_epochs"] + 1):
            self.model.train()
            t0 = time.perf_counter()
            total, steps = torch.zeros((), device=self.device), 0
            for batch in tqdm(self.batches.epoch(), total=len(self.batches), desc=f"epoch {epoch}",
                              disable=not progress, leave=False, mininterval=2):
                total += self.step(self.batch_loss(batch))
                steps += 1
            result.steps += steps
            if self.world_size > 1:  # the mean over processes: the global batch's loss
                torch.distributed.all_reduce(total)
                total /= self.world_size
            row = {"epoch": epoch, "train_loss": float(total) / steps, "val_loss": self.validation_loss(),
                   "seconds": time.perf_counter() - t0}
            if not math.isfinite(row["train_loss"]):
                raise DivergedError(f"epoch {epoch}: the training loss is {row['train_loss']} (diverged; "
                                    f"a learning rate of {cfg['learning_rate']} may be too high)")
            row.update(on_epoch(self.model) if on_epoch is not None else {})
            row["best"] = stopping.update(epoch, row, self.model)
            result.history.append(row)
            monitor = stopping.metric
            if self.rank == 0:
                print(f"epoch {epoch}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f}"
                      + (f" {monitor} {row[monitor]:.4f}" if monitor != "val_loss" else "")
                      + (" *" if row["best"] else ""), flush=True)
            result.best_epoch, result.stopped_epoch = stopping.best_epoch, epoch
            if stopping.should_stop:
                break
        stopping.restore_best(self.model)
        self.model.eval()
        result.seconds = time.perf_counter() - start
        return result


@torch.no_grad()
def embed_users(model: TwoTower, users: np.ndarray, device, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    out = [model.user_tower(torch.as_tensor(users[s:s + batch_size], device=device)).cpu().numpy()
           for s in range(0, len(users), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
