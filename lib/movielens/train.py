"""Two-tower training on MovieLens: one loop, read top to bottom in ``Trainer.fit``.

The pieces it is made of, each small and tested on its own:
- batch sources: ``InteractionBatches`` (one positive (user, item) per row, shuffled each
  epoch) and ``UserBatches`` (all of a user's held-out targets per row; the input/target
  split of each history is drawn anew each epoch, ``split_user_history``);
- losses: ``InteractionLoss`` (in-batch, explicit, mixed or full softmax; a general path
  and a grouped path for features-only towers, which computes the same loss faster) and
  ``MultinomialLoss`` (user batches: a softmax over the whole catalog per user);
- ``EarlyStopping``: the monitored value, patience, min_delta, and the best state.
Every random draw comes from two generators made once per trainer from the seed (numpy:
batch order, negatives, target splits; torch: hard-negative picks) plus torch's global
generator (initial weights, dropout), so the same params and seed give the same model.
"""
from __future__ import annotations

import copy
import math
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
from .towers import ItemTower, TwoTower, UserTower


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class NegativeSampler:
    """Uniform negatives that are never one of the user's training items."""

    DENSE_MAX_CELLS = 100_000_000  # a dense seen-matrix up to 100 MB (ML-1M: 21 MB)

    def __init__(self, seen: sp.csr_matrix):
        self.n_items = seen.shape[1]
        self.dense = None
        if seen.shape[0] * seen.shape[1] <= self.DENSE_MAX_CELLS:
            self.dense = seen.toarray() > 0  # one lookup per draw instead of a binary search
            return
        coo = seen.tocoo()
        self.keys = np.unique(coo.row.astype(np.int64) * self.n_items + coo.col)

    def is_seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.dense is not None:
            return self.dense[users, items]
        q = users.astype(np.int64) * self.n_items + items
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[pos] == q

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        u = np.repeat(users, n)
        items = rng.integers(0, self.n_items, len(u))
        bad = self.is_seen(u, items)
        for _ in range(100):
            if not bad.any():
                break
            items[bad] = rng.integers(0, self.n_items, int(bad.sum()))
            bad[bad] = self.is_seen(u[bad], items[bad])
        if bad.any():
            raise RuntimeError("could not sample unseen negatives: a user has seen almost every item")
        return items.reshape(len(users), n)


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
    seen_users = np.zeros(data.n_users, bool)
    seen_users[data.train["user"].to_numpy()] = True
    seen_items = np.zeros(data.n_items, bool)
    seen_items[data.train["item"].to_numpy()] = True
    user = UserTower(data.n_users, data.n_items, data.user_features, seen_users, model_cfg)
    user.set_trained_users(seen_users)
    pop = (popularity_features(data, model_cfg["popularity_window_days"])
           if model_cfg["item_popularity"] else None)
    item = ItemTower(data.n_items, data.item_features, seen_items, model_cfg, popularity=pop)
    if model_cfg["history"] != "none":
        user.set_history(history_weights(data, model_cfg["history"], model_cfg["history_half_life_days"]))
    return TwoTower(user, item)


# -- batch sources ------------------------------------------------------------------------------
class InteractionBatches:
    """(users, items) batches of ``batch_size`` training positives, in a new random order
    each epoch; the ragged last batch is dropped (one smaller batch would weigh as much as a
    full one)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.users, self.items, self.batch_size, self.rng = users, items, batch_size, rng
        n = len(users)
        self.starts = range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size)

    def __len__(self) -> int:
        return len(self.starts)

    def epoch(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self.rng.permutation(len(self.users))
        for s in self.starts:
            idx = order[s:s + self.batch_size]
            yield self.users[idx], self.items[idx]


def split_user_history(hist: sp.csr_matrix, nnz_rating: np.ndarray, nnz_timestamp: np.ndarray,
                       target_fraction: float, selection: str, positive_min_rating: int,
                       has_input_history: bool, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split every user's training items into an input part (the history the user tower
    sees) and a target part (``target_fraction``): at random (``selection: random``,
    re-drawn at each call) or each user's most recent items (``latest``: the task the test
    split poses, the same split every epoch). Users with >= 2 items keep at least one
    input and one target. The targets are never in the input: the tower must predict
    them, not copy them. ``nnz_rating``/``nnz_timestamp`` are aligned with ``hist.data``;
    targets rated below ``positive_min_rating`` are dropped. Without an input history
    (``has_input_history`` False) every item is a target."""
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
    targets = sp.csr_matrix(((is_target & ratings_ok).astype(np.float32), hist.indices.copy(), hist.indptr.copy()),
                            shape=hist.shape)
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
    step (a few thousand items: cheap and exact), and every logit is read from it."""

    def __init__(self, model: TwoTower, cfg: dict, seen: sp.csr_matrix, log_q: torch.Tensor,
                 device: torch.device, generator: torch.Generator):
        self.model, self.cfg, self.seen, self.log_q, self.device = model, cfg, seen, log_q, device
        self.generator = generator  # hard-negative picks

    def __call__(self, users: np.ndarray, items: np.ndarray, negatives: np.ndarray | None,
                 leave_out_target: bool = True) -> torch.Tensor:
        u_t = torch.as_tensor(users, device=self.device)
        i_t = torch.as_tensor(items, device=self.device)
        if self.model.user_tower.grouped and self.model.item_tower.grouped and self.cfg["kind"] != "full_softmax":
            return self.grouped(u_t, i_t, negatives, users)
        return self.general(u_t, i_t, negatives, users, leave_out_target)

    def general(self, u_t, i_t, negatives, users, leave_out_target) -> torch.Tensor:
        cfg, tower = self.cfg, self.model.user_tower
        user_rows = None
        if tower.grouped:
            user_distinct, user_rows = tower.forward_grouped(u_t)
            user_vec = user_distinct[user_rows]
        else:
            user_vec = tower(u_t, leave_out=i_t if leave_out_target else None)
        all_items = self.model.item_tower()
        pos = F.embedding(i_t, all_items)
        temp, kind = cfg["temperature"], cfg["kind"]
        terms = {}
        if kind in ("explicit", "mixed"):
            neg_ids = torch.as_tensor(negatives, device=self.device)
            if cfg["num_hard_negatives"] > 0:
                neg_ids = torch.cat([neg_ids, self.hard_negatives(users, user_vec @ all_items.T)], dim=1)
            terms["explicit"] = losses.sampled_softmax(user_vec, pos, F.embedding(neg_ids, all_items), temp)
        if kind in ("in_batch", "mixed"):
            terms["in_batch"] = losses.in_batch_softmax(
                user_vec if user_rows is None else user_distinct, pos, temp, item_ids=i_t, user_rows=user_rows,
                log_q=self.log_q[i_t] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"])
        if kind == "full_softmax":
            mask = None
            if cfg["remove_accidental_hits"]:
                mask = torch.as_tensor(self.seen[users].toarray() > 0, device=self.device)
            terms["full"] = losses.full_softmax(user_vec, all_items, i_t, temp, mask)
        return _mixed(terms, cfg)

    def grouped(self, u_t, i_t, negatives, users) -> torch.Tensor:
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
                neg_ids = torch.cat([neg_ids, self.hard_negatives(users, scores[rows][:, group])], dim=1)
            terms["explicit"] = losses.sampled_softmax_logits(scores[rows, group[i_t]],
                                                              scores[rows[:, None], group[neg_ids]])
        if cfg["kind"] in ("in_batch", "mixed"):
            items, col_of, count = torch.unique(i_t, return_inverse=True, return_counts=True)
            terms["in_batch"] = losses.in_batch_softmax_distinct(
                scores[:, group[items]], rows, col_of, count,
                col_log_q=self.log_q[items] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"])
        return _mixed(terms, cfg)

    def hard_negatives(self, users: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """Items the current model ranks highest that the user never saw in training:
        ``num_hard_negatives`` picked at random from the top ``hard_negative_pool``."""
        with torch.no_grad():
            seen = torch.as_tensor(self.seen[users].toarray() > 0, device=scores.device)
            scores = scores.detach().masked_fill(seen, float("-inf"))
            pool = torch.topk(scores, self.cfg["hard_negative_pool"], dim=1).indices
            pick = torch.randint(0, pool.shape[1], (len(users), self.cfg["num_hard_negatives"]),
                                 generator=self.generator, device="cpu").to(scores.device)
            return torch.gather(pool, 1, pick)


class MultinomialLoss:
    """User batches: the multinomial log-likelihood of each user's targets under a softmax
    over the whole catalog, averaged over the user's targets; with
    ``remove_accidental_hits`` the user's input items are masked out of the softmax (they
    are excluded at evaluation too)."""

    def __init__(self, model: TwoTower, cfg: dict, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device

    def __call__(self, users: np.ndarray, inputs: sp.csr_matrix, targets: sp.csr_matrix) -> torch.Tensor:
        tower = self.model.user_tower
        u_t = torch.as_tensor(users, device=self.device)
        user_vec = tower(u_t, history=inputs[users] if tower.history != "none" else None)
        logits = user_vec @ self.model.item_tower().T / self.cfg["temperature"]
        if self.cfg["remove_accidental_hits"]:
            mask = torch.as_tensor(inputs[users].toarray() > 0, device=self.device)
            logits = logits.masked_fill(mask, float("-inf"))
        tgt = torch.as_tensor(targets[users].toarray(), device=self.device)
        n = tgt.sum(1)
        keep = n > 0
        logp = torch.log_softmax(logits[keep], dim=1)
        return -(torch.where(tgt[keep] > 0, logp, torch.zeros_like(logp)).sum(1) / n[keep]).mean()


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
                 seed: int, device: str = "cpu"):
        self.data, self.loss_cfg, self.train_cfg, self.seed = data, loss_cfg, train_cfg, seed
        self.device = pick_device(device)
        if loss_cfg["num_hard_negatives"] > 0 and loss_cfg["hard_negative_pool"] > data.n_items:
            raise ParamsError(f"loss.hard_negative_pool ({loss_cfg['hard_negative_pool']}) is larger than the "
                              f"catalog ({data.n_items} items)")
        seed_everything(seed)
        self.model = build_model(data, model_cfg).to(self.device)
        self.rng = np.random.default_rng(seed)                   # batch order, negatives, target splits
        self.generator = torch.Generator().manual_seed(seed)     # hard-negative picks
        self.seen = data.matrix("train")
        self.sampler = NegativeSampler(self.seen)
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
        self.user_loss = MultinomialLoss(self.model, loss_cfg, self.device)
        if train_cfg["batching"] == "users":
            self.nnz_rating = _aligned_with(self.seen, data.train, "rating", np.float32)
            self.nnz_timestamp = _aligned_with(self.seen, data.train, "timestamp", np.float64)
            active = np.flatnonzero(np.diff(self.seen.indptr) > 0)
            self.batches = UserBatches(active, train_cfg["user_batch_size"], self.split_user_history, self.rng)
        else:
            self.batches = InteractionBatches(self.train_users, self.train_items, train_cfg["batch_size"], self.rng)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg["learning_rate"],
                                          weight_decay=train_cfg["weight_decay"],
                                          fused=True)  # one kernel over all parameters; same update rule

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
                                  self.model.user_tower.history != "none", rng)

    def negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        if self.loss_cfg["kind"] in ("explicit", "mixed"):
            return self.sampler.sample(users, self.loss_cfg["num_negatives"], rng)
        return None

    def batch_loss(self, batch) -> torch.Tensor:
        if self.train_cfg["batching"] == "users":
            return self.user_loss(*batch)
        users, items = batch
        return self.loss(users, items, self.negatives(users, self.rng))

    def step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The training loss on the validation positives: for user batches, inputs = the
        whole training history and targets = the validation positives; for interaction
        batches, fixed negatives and batch order (seeded apart from training)."""
        if len(self.val_users) == 0:
            return float("nan")
        self.model.eval()
        if self.train_cfg["batching"] == "users":
            val = sp.csr_matrix((np.ones(len(self.val_users), np.float32), (self.val_users, self.val_items)),
                                shape=self.seen.shape)
            users = np.unique(self.val_users)
            total = sum(float(self.user_loss(users[s:s + 512], self.input_history, val)) * len(users[s:s + 512])
                        for s in range(0, len(users), 512))
            return total / len(users)
        rng = np.random.default_rng(self.seed + 10_000)
        bs = self.train_cfg["batch_size"]
        total, n = 0.0, 0
        for s in range(0, len(self.val_users), bs):
            u, i = self.val_users[s:s + bs], self.val_items[s:s + bs]
            total += float(self.loss(u, i, self.negatives(u, rng), leave_out_target=False)) * len(u)
            n += len(u)
        return total / n

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
            total, steps = 0.0, 0
            for batch in tqdm(self.batches.epoch(), total=len(self.batches), desc=f"epoch {epoch}",
                              disable=not progress, leave=False, mininterval=2):
                total += self.step(self.batch_loss(batch))
                steps += 1
            result.steps += steps
            row = {"epoch": epoch, "train_loss": total / steps, "val_loss": self.validation_loss(),
                   "seconds": time.perf_counter() - t0}
            if not math.isfinite(row["train_loss"]):
                raise DivergedError(f"epoch {epoch}: the training loss is {row['train_loss']} (diverged; "
                                    f"a learning rate of {cfg['learning_rate']} may be too high)")
            row.update(on_epoch(self.model) if on_epoch is not None else {})
            row["best"] = stopping.update(epoch, row, self.model)
            result.history.append(row)
            monitor = stopping.metric
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
