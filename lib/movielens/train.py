"""Two-tower training: one readable loop (nanoGPT style), config as plain values.

Per step the item tower embeds the whole catalog once (a few thousand items: cheap and
exact), and positives, explicit negatives, hard negatives and the full-softmax logits are
all read from that one matrix.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import losses
from .prepared import PreparedData
from .towers import ItemTower, TwoTower, UserTower


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda asked for, but torch sees no GPU")
    return torch.device(name)


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
    user = UserTower(data.n_users, data.n_items, data.user_gender, data.user_age,
                     data.user_occupation, model_cfg)
    pop = (popularity_features(data, model_cfg["popularity_window_days"])
           if model_cfg["item_popularity"] else None)
    item = ItemTower(data.n_items, data.item_genres, data.item_year, model_cfg, popularity=pop)
    if model_cfg["history"] != "none":
        user.set_history(history_weights(data, model_cfg["history"], model_cfg["history_half_life_days"]))
    return TwoTower(user, item)


@dataclass
class TrainResult:
    model: TwoTower
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_epoch: int = 0
    seconds: float = 0.0
    steps: int = 0


class Trainer:
    def __init__(self, data: PreparedData, model_cfg: dict, loss_cfg: dict, train_cfg: dict,
                 seed: int, device: str = "cpu"):
        self.data, self.loss_cfg, self.train_cfg, self.seed = data, loss_cfg, train_cfg, seed
        self.device = pick_device(device)
        seed_everything(seed)
        self.model = build_model(data, model_cfg).to(self.device)
        self.seen = data.matrix("train")
        self.sampler = NegativeSampler(self.seen)
        min_r = train_cfg["positive_min_rating"]
        tr = data.train[data.train["rating"] >= min_r]
        # copies: pandas hands out read-only views, which torch.as_tensor warns about at every step
        self.train_users, self.train_items = tr["user"].to_numpy(copy=True), tr["item"].to_numpy(copy=True)
        # rating of each stored entry of the (canonical CSR) training matrix, aligned with its data
        r = sp.csr_matrix((data.train["rating"].to_numpy(np.float32),
                           (data.train["user"].to_numpy(), data.train["item"].to_numpy())), shape=self.seen.shape)
        r.sort_indices()
        self.nnz_rating = r.data
        t = sp.csr_matrix((data.train["timestamp"].to_numpy(np.float64),
                           (data.train["user"].to_numpy(), data.train["item"].to_numpy())), shape=self.seen.shape)
        t.sort_indices()
        self.nnz_timestamp = t.data
        va = data.val[data.val["rating"] >= min_r]
        self.val_users, self.val_items = va["user"].to_numpy(copy=True), va["item"].to_numpy(copy=True)
        counts = np.bincount(self.train_items, minlength=data.n_items).astype(np.float64)
        q = (counts + 1.0) / (counts.sum() + data.n_items)  # candidate sampling probability
        self.log_q = torch.as_tensor(np.log(q), dtype=torch.float32, device=self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=train_cfg["learning_rate"],
                                          weight_decay=train_cfg["weight_decay"],
                                          fused=True)  # one kernel over all parameters; same update rule

    # -- loss for one batch: kept separate so tests can probe it -------------------------
    def batch_loss(self, users: np.ndarray, items: np.ndarray, negatives: np.ndarray | None,
                   leave_out_target: bool = True) -> torch.Tensor:
        cfg = self.loss_cfg
        dev = self.device
        u_t = torch.as_tensor(users, device=dev)
        i_t = torch.as_tensor(items, device=dev)
        tower = self.model.user_tower
        user_rows = None
        if tower.grouped and self.model.item_tower.grouped and cfg["kind"] != "full_softmax":
            return self._grouped_batch_loss(u_t, i_t, negatives, users)
        if tower.grouped:
            user_distinct, user_rows = tower.forward_grouped(u_t)
            user_vec = user_distinct[user_rows]
        else:
            user_vec = tower(u_t, leave_out=i_t if leave_out_target else None)
        all_items = self.model.item_tower()
        pos = F.embedding(i_t, all_items)
        temp = cfg["temperature"]
        kind = cfg["kind"]
        terms = {}
        if kind in ("explicit", "mixed"):
            neg_ids = torch.as_tensor(negatives, device=dev)
            if cfg["num_hard_negatives"] > 0:
                neg_ids = torch.cat([neg_ids, self._hard_negatives(users, user_vec, all_items)], dim=1)
            terms["explicit"] = losses.sampled_softmax(user_vec, pos, F.embedding(neg_ids, all_items), temp)
        if kind in ("in_batch", "mixed"):
            terms["in_batch"] = losses.in_batch_softmax(
                user_vec if user_rows is None else user_distinct, pos, temp, item_ids=i_t, user_rows=user_rows,
                log_q=self.log_q[i_t] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"])
        if kind == "full_softmax":
            mask = None
            if cfg["remove_accidental_hits"]:
                mask = torch.as_tensor(self.seen[users].toarray() > 0, device=dev)
            terms["full"] = losses.full_softmax(user_vec, all_items, i_t, temp, mask)
        if kind == "mixed":
            w = cfg["explicit_weight"]
            return w * terms["explicit"] + (1 - w) * terms["in_batch"]
        (loss,) = terms.values()
        return loss

    def _grouped_batch_loss(self, u_t, i_t, negatives, users) -> torch.Tensor:
        """Features-only towers: every logit the loss needs is an entry of one small
        (distinct users x distinct item feature rows) score matrix, so nothing else is
        multiplied, and the in-batch softmax runs over distinct users x distinct items
        (``losses.in_batch_softmax_distinct``). Same loss as the general path (tests check
        it), several times faster on CPU."""
        cfg = self.loss_cfg
        user_distinct, rows = self.model.user_tower.forward_grouped(u_t)
        item_tower = self.model.item_tower
        scores = user_distinct @ item_tower.group_embeddings().T / cfg["temperature"]
        group = item_tower.item_group
        terms = {}
        if cfg["kind"] in ("explicit", "mixed"):
            neg_ids = torch.as_tensor(negatives, device=self.device)
            if cfg["num_hard_negatives"] > 0:
                all_scores = scores[rows][:, group]
                neg_ids = torch.cat([neg_ids, self._hard_negatives_from_scores(users, all_scores)], dim=1)
            terms["explicit"] = losses.sampled_softmax_logits(scores[rows, group[i_t]],
                                                              scores[rows[:, None], group[neg_ids]])
        if cfg["kind"] in ("in_batch", "mixed"):
            items, col_of, count = torch.unique(i_t, return_inverse=True, return_counts=True)
            terms["in_batch"] = losses.in_batch_softmax_distinct(
                scores[:, group[items]], rows, col_of, count,
                col_log_q=self.log_q[items] if cfg["logq_correction"] else None,
                remove_accidental_hits=cfg["remove_accidental_hits"])
        if cfg["kind"] == "mixed":
            w = cfg["explicit_weight"]
            return w * terms["explicit"] + (1 - w) * terms["in_batch"]
        (loss,) = terms.values()
        return loss

    def _hard_negatives(self, users: np.ndarray, user_vec: torch.Tensor, all_items: torch.Tensor) -> torch.Tensor:
        return self._hard_negatives_from_scores(users, user_vec @ all_items.T)

    def _hard_negatives_from_scores(self, users: np.ndarray, scores: torch.Tensor) -> torch.Tensor:
        """Items the current model ranks highest that the user never saw in training:
        pick ``num_hard_negatives`` at random from the top ``hard_negative_pool``."""
        with torch.no_grad():
            seen = torch.as_tensor(self.seen[users].toarray() > 0, device=scores.device)
            scores = scores.detach().masked_fill(seen, float("-inf"))
            pool = torch.topk(scores, self.loss_cfg["hard_negative_pool"], dim=1).indices
            pick = torch.randint(0, pool.shape[1], (len(users), self.loss_cfg["num_hard_negatives"]),
                                 generator=self._gen, device="cpu").to(scores.device)
            return torch.gather(pool, 1, pick)

    def _negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        if self.loss_cfg["kind"] in ("explicit", "mixed"):
            return self.sampler.sample(users, self.loss_cfg["num_negatives"], rng)
        return None

    def validation_loss(self) -> float:
        """Same loss on validation positives, fixed negatives and batch order (seeded)."""
        if len(self.val_users) == 0:
            return float("nan")
        if self.train_cfg["batching"] == "users":
            # inputs = the whole training history, targets = validation positives
            hist = self.model.user_tower.hist if self.model.user_tower.hist is not None else self.seen
            val = sp.csr_matrix((np.ones(len(self.val_users), np.float32), (self.val_users, self.val_items)),
                                shape=self.seen.shape)
            users = np.unique(self.val_users)
            self.model.eval()
            with torch.no_grad():
                losses_ = [float(self.user_batch_loss(users[s:s + 512], hist, val)) * len(users[s:s + 512])
                           for s in range(0, len(users), 512)]
            return sum(losses_) / len(users)
        rng = np.random.default_rng(self.seed + 10_000)
        bs = self.train_cfg["batch_size"]
        self.model.eval()
        total, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(self.val_users), bs):
                u, i = self.val_users[s:s + bs], self.val_items[s:s + bs]
                loss = self.batch_loss(u, i, self._negatives(u, rng), leave_out_target=False)
                total += float(loss) * len(u)
                n += len(u)
        return total / n

    # -- user-batched multinomial training ------------------------------------------------
    def _user_split(self, rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Split every user's training items into an input part (the history the user tower
        sees) and a target part (``target_fraction``): at random, re-drawn each epoch, or the
        most recent items (``target_selection: latest``). The targets are never in the
        input: the tower must predict them, not copy them."""
        hist = self.model.user_tower.hist if self.model.user_tower.hist is not None else self.seen
        hist = hist.tocsr()
        counts = np.diff(hist.indptr)
        row = np.repeat(np.arange(hist.shape[0]), counts)
        if self.train_cfg["target_selection"] == "latest":
            # each user's most recent items are the targets, the older ones the input: the
            # task the test split poses (predict what comes next); the same split every epoch.
            # At least one input and one target for users with >= 2 items.
            order = np.lexsort((self.nnz_timestamp, row))
            rank = np.empty(hist.nnz, np.int64)
            rank[order] = np.arange(hist.nnz) - hist.indptr[row[order]]
            n_target = np.clip(np.round(self.train_cfg["target_fraction"] * counts), 1, np.maximum(counts - 1, 1))
            is_target = rank >= (counts - n_target)[row]
        else:
            is_target = rng.random(hist.nnz) < self.train_cfg["target_fraction"]
            # keep at least one input and one target for users with >= 2 items
            first = hist.indptr[:-1][counts >= 2]
            is_target[first] = False
            n_t = np.bincount(row[is_target], minlength=hist.shape[0])
            need = np.flatnonzero((n_t == 0) & (counts >= 2))
            is_target[hist.indptr[need] + 1] = True
        if self.model.user_tower.history == "none":
            is_target[:] = True  # no input history to leak into: every item is a target
        ratings_ok = self.nnz_rating >= self.train_cfg["positive_min_rating"]
        # copies of indices/indptr: eliminate_zeros() below works in place and must not touch `hist`
        inputs = sp.csr_matrix((np.where(is_target, 0, hist.data), hist.indices.copy(), hist.indptr.copy()), shape=hist.shape)
        targets = sp.csr_matrix(((is_target & ratings_ok).astype(np.float32), hist.indices.copy(), hist.indptr.copy()),
                                shape=hist.shape)
        inputs.eliminate_zeros()
        targets.eliminate_zeros()
        return inputs, targets

    def user_batch_loss(self, users: np.ndarray, inputs: sp.csr_matrix, targets: sp.csr_matrix) -> torch.Tensor:
        """Multinomial log-likelihood of each user's targets under a softmax over the whole
        catalog; the user's input items are masked out of the softmax when
        ``remove_accidental_hits`` (they are excluded at evaluation too)."""
        dev = self.device
        u_t = torch.as_tensor(users, device=dev)
        user_vec = self.model.user_tower(u_t, history=inputs[users] if self.model.user_tower.history != "none" else None)
        logits = user_vec @ self.model.item_tower().T / self.loss_cfg["temperature"]
        if self.loss_cfg["remove_accidental_hits"]:
            mask = torch.as_tensor(inputs[users].toarray() > 0, device=dev)
            logits = logits.masked_fill(mask, float("-inf"))
        tgt = torch.as_tensor(targets[users].toarray(), device=dev)
        n = tgt.sum(1)
        keep = n > 0
        logp = torch.log_softmax(logits[keep], dim=1)
        return -(torch.where(tgt[keep] > 0, logp, torch.zeros_like(logp)).sum(1) / n[keep]).mean()

    def _fit_users(self, rng, on_epoch, result, progress) -> None:
        cfg = self.train_cfg
        active = np.flatnonzero(np.diff(self.seen.indptr) > 0)
        bs = cfg["user_batch_size"]
        best, best_state, bad_epochs = math.inf, None, 0
        for epoch in range(1, cfg["max_epochs"] + 1):
            self.model.train()
            t0 = time.perf_counter()
            inputs, targets = self._user_split(rng)
            order = rng.permutation(active)
            total, steps = 0.0, 0
            for s in tqdm(range(0, len(order), bs), desc=f"epoch {epoch}", disable=not progress, leave=False, mininterval=2):
                total += self._optimizer_step(self.user_batch_loss(order[s:s + bs], inputs, targets))
                steps += 1
            result.steps += steps
            row = {"epoch": epoch, "train_loss": total / steps, "val_loss": self.validation_loss(),
                   "seconds": time.perf_counter() - t0}
            best, best_state, bad_epochs, stop = self._end_epoch(row, on_epoch, result, best, best_state, bad_epochs)
            if stop:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)

    def _optimizer_step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _end_epoch(self, row, on_epoch, result, best, best_state, bad_epochs):
        cfg = self.train_cfg
        if on_epoch is not None:
            row.update(on_epoch(self.model) or {})
        monitor = cfg["early_stopping_metric"]
        value = row[monitor] if monitor == "val_loss" else -row[monitor]
        improved = value < best - max(cfg["min_delta"], 1e-9)
        row["best"] = improved
        result.history.append(row)
        if improved:
            best, best_state, bad_epochs = value, copy.deepcopy(self.model.state_dict()), 0
            result.best_epoch = row["epoch"]
        else:
            bad_epochs += 1
        print(f"epoch {row['epoch']}: train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f}"
              + (f" {monitor} {row[monitor]:.4f}" if monitor != "val_loss" else "")
              + (" *" if improved else ""), flush=True)
        result.stopped_epoch = row["epoch"]
        return best, best_state, bad_epochs, bad_epochs >= cfg["patience"]

    def fit(self, on_epoch=None, progress: bool = True) -> TrainResult:
        cfg = self.train_cfg
        if cfg["batching"] == "users":
            rng = np.random.default_rng(self.seed)
            self._gen = torch.Generator().manual_seed(self.seed)
            result = TrainResult(self.model)
            start = time.perf_counter()
            self._fit_users(rng, on_epoch, result, progress)
            self.model.eval()
            result.seconds = time.perf_counter() - start
            return result
        bs = cfg["batch_size"]
        rng = np.random.default_rng(self.seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        best, best_state, bad_epochs = math.inf, None, 0
        result = TrainResult(self.model)
        start = time.perf_counter()
        n = len(self.train_users)
        for epoch in range(1, cfg["max_epochs"] + 1):
            self.model.train()
            order = rng.permutation(n)
            total, t0 = 0.0, time.perf_counter()
            steps = range(0, n - bs + 1 if n >= bs else 1, bs)  # drop the ragged last batch
            for s in tqdm(steps, desc=f"epoch {epoch}", disable=not progress, leave=False, mininterval=2):
                idx = order[s:s + bs]
                u, i = self.train_users[idx], self.train_items[idx]
                total += self._optimizer_step(self.batch_loss(u, i, self._negatives(u, rng)))
                result.steps += 1
            row = {"epoch": epoch, "train_loss": total / len(steps), "val_loss": self.validation_loss(),
                   "seconds": time.perf_counter() - t0}
            best, best_state, bad_epochs, stop = self._end_epoch(row, on_epoch, result, best, best_state, bad_epochs)
            if stop:
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        result.seconds = time.perf_counter() - start
        return result


@torch.no_grad()
def embed_users(model: TwoTower, users: np.ndarray, device, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    out = [model.user_tower(torch.as_tensor(users[s:s + batch_size], device=device)).cpu().numpy()
           for s in range(0, len(users), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
