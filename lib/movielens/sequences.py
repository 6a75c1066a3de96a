"""Sequence query towers: the user vector is an encoder's output over the user's
time-ordered history, and the item vectors are the item embeddings the encoder reads
(shared, as in SASRec). Trained with a full softmax over the catalog at every position of
the history (the next item is the target), the loss Klenitskiy & Vasilev (RecSys 2023)
found to matter more than the architecture.

- ``sasrec``: causal self-attention (Kang & McAuley, ICDM 2018): item embedding x sqrt(d)
  + a learned position embedding, ``attention_blocks`` pre-norm Transformer blocks
  (``torch.nn.TransformerEncoderLayer``), a final LayerNorm.
- ``gru4rec``: a GRU over the item embeddings (Hidasi et al., ICLR 2016), fed only the
  real items of each history (packed: the padding never enters the recurrence).

Histories are the training split's interactions (the validation ones too with
``evaluate.query_history: train+val``) in time order (``tie_break`` within a second), the
last ``max_sequence_length`` kept, left-padded with 0 (item i is code i + 1; a history
that fits whole begins with a start code), so the last column is always the latest item
and the position embeddings count back from it. Written by hand:
the model-specific part (a library's sequential recommender would bring its own data
pipeline, split and metrics, which this study must share with the baselines).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

SEQUENTIAL = ("sasrec", "gru4rec")


def tie_break(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random order of the interactions that share a timestamp (a hash of
    the (user, item) pair). Not the item index: MovieLens-1M logs 55% of consecutive
    ratings in the same second, and ordered by index the next item would always have the
    larger index, an artefact a sequence model learns instead of the user."""
    key = (np.asarray(users, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.asarray(items, np.uint64)
    key = (key ^ (key >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
    return key ^ (key >> np.uint64(29))


def padded_histories(interactions: pd.DataFrame, n_users: int, n_items: int, length: int,
                     values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(n_users, length) codes of each user's last ``length`` interactions in time order
    (``tie_break`` within a timestamp), left-padded: item i is code i + 1, 0 is padding,
    and a history that fits whole starts with the start code n_items + 1 (so an empty
    history reads the start code alone: the encoder learns what a history begins with,
    which is what it offers users without training history). With ``values`` (one per row
    of ``interactions``, e.g. loss weights), the same-shaped array of those values (0 on
    padding and on the start code)."""
    users_all = interactions["user"].to_numpy()
    items_all = interactions["item"].to_numpy()
    order = np.lexsort((tie_break(users_all, items_all), interactions["timestamp"].to_numpy(), users_all))
    users = users_all[order]
    counts = np.bincount(users, minlength=n_users)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_from_end = counts[users] - 1 - (np.arange(len(order)) - first[users])
    keep = rank_from_end < length
    rows, cols = users[keep], length - 1 - rank_from_end[keep]
    codes = np.zeros((n_users, length), np.int64)
    codes[rows, cols] = items_all[order][keep] + 1
    whole = np.flatnonzero(counts < length)
    codes[whole, length - 1 - counts[whole]] = n_items + 1
    if values is None:
        return codes, None
    placed = np.zeros((n_users, length), np.asarray(values).dtype)
    placed[rows, cols] = np.asarray(values)[order][keep]
    return codes, placed


def _left_to_right(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """Column index that moves each left-padded row's items to the start (gather with it)."""
    return (torch.arange(length, device=lengths.device)[None, :] + (length - lengths)[:, None]) % length


class SequenceUserTower(nn.Module):
    """The user vector = the encoder's output at the last position of the user's history
    (``set_histories``); ``encode`` gives the output at every position (training)."""

    history = "sequence"   # what the training loop and the test-time protocols ask a user tower
    hist = None            # (a pooled history matrix: the mlp and linear towers')
    grouped = False
    EMBED_USERS = 512      # users encoded at a time when embedding many (memory: users x L x L)

    def __init__(self, n_users: int, item_codes: nn.Embedding, cfg: dict):
        super().__init__()
        self.architecture = cfg["architecture"]
        d, length = cfg["embedding_dim"], cfg["max_sequence_length"]
        self.length = length
        self.item_codes = item_codes  # shared with the item tower
        self.dropout = nn.Dropout(cfg["dropout"])
        if self.architecture == "sasrec":
            self.positions = nn.Embedding(length, d)
            block = nn.TransformerEncoderLayer(d, cfg["attention_heads"], dim_feedforward=d, dropout=cfg["dropout"],
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, cfg["attention_blocks"], enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.heads = cfg["attention_heads"]
        elif self.architecture == "gru4rec":
            self.gru = nn.GRU(d, d, batch_first=True)
        else:
            raise ValueError(f"not a sequence architecture: {self.architecture}")
        self.register_buffer("histories", torch.zeros((n_users, length), dtype=torch.long), persistent=False)
        self.register_buffer("trained_users", torch.ones(n_users, dtype=torch.bool), persistent=False)

    def set_histories(self, codes: np.ndarray) -> None:
        """(n_users, max_sequence_length) left-padded item codes (``padded_histories``)."""
        self.histories = torch.as_tensor(codes, dtype=torch.long, device=self.histories.device)

    def set_trained_users(self, mask: np.ndarray) -> None:
        """Kept for the user towers' common interface: a sequence tower has no user ID vectors."""

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L, d): the output at every position of left-padded ``codes`` (B, L); the
        output at position t reads the items at positions <= t only."""
        b, length = codes.shape
        valid = codes > 0
        x = self.item_codes(codes)
        if self.architecture == "sasrec":
            x = x * math.sqrt(x.shape[-1]) + self.positions.weight[self.length - length:][None]
            x = self.dropout(x) * valid[..., None]
            causal = torch.ones(length, length, dtype=torch.bool, device=codes.device).tril()
            eye = torch.eye(length, dtype=torch.bool, device=codes.device)
            # a position reads itself and the earlier real items (never padding); every row
            # allows at least itself, so no softmax row is empty
            allowed = (causal[None] & valid[:, None, :]) | eye[None]
            mask = (~allowed).repeat_interleave(self.heads, dim=0)
            return self.norm(self.blocks(x, mask=mask)) * valid[..., None]
        lengths = valid.sum(1).clamp_min(1)
        idx = _left_to_right(lengths, length)
        right = torch.gather(self.dropout(x), 1, idx[..., None].expand_as(x))
        packed = nn.utils.rnn.pack_padded_sequence(right, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=length)
        back = (torch.arange(length, device=codes.device)[None, :] - (length - lengths)[:, None]) % length
        return torch.gather(out, 1, back[..., None].expand_as(out)) * valid[..., None]

    def forward(self, users: torch.Tensor, **_) -> torch.Tensor:
        outs = [self.encode(self.histories[users[s:s + self.EMBED_USERS]])[:, -1]
                for s in range(0, len(users), self.EMBED_USERS)]
        return torch.cat(outs) if outs else torch.zeros((0, self.item_codes.embedding_dim))


class SharedItemTower(nn.Module):
    """Item vectors = the item embeddings the sequence encoder reads: code 0 is padding,
    code i + 1 item i, code n_items + 1 the start code (the input of a user without training
    history: the encoder's learned "first item" output); only items are ever ranked."""

    grouped = False

    def __init__(self, n_items: int, cfg: dict):
        super().__init__()
        self.n_items = n_items
        self.codes = nn.Embedding(n_items + 2, cfg["embedding_dim"], padding_idx=0)  # + padding, start
        nn.init.normal_(self.codes.weight, std=cfg["embedding_dim"] ** -0.5)
        with torch.no_grad():
            self.codes.weight[0].zero_()

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        return self.codes.weight[1:self.n_items + 1] if items is None else self.codes(items + 1)


class SequenceBatches:
    """Batches of users with a training history, in a new random order each epoch."""

    def __init__(self, active_users: np.ndarray, batch_size: int, rng: np.random.Generator):
        self.active, self.batch_size, self.rng = active_users, batch_size, rng

    def __len__(self) -> int:
        return math.ceil(len(self.active) / self.batch_size)

    def epoch(self):
        order = self.rng.permutation(self.active)
        for s in range(0, len(order), self.batch_size):
            yield order[s:s + self.batch_size]


def _shifted(codes: torch.Tensor, j: int) -> torch.Tensor:
    """``codes`` moved j columns left (column t holds column t + j), 0 past the end."""
    return codes if j == 0 else F.pad(codes[:, j:], (0, j))


class NextItemLoss:
    """Full softmax over the catalog at every position of each user's training history:
    the output at position t (items <= t) against the item at t + 1 (with ``next_items`` N
    > 1, the mean log-likelihood of the items at t + 1 ... t + N: the "dense all-action"
    loss of PinnerFormer, Pancha et al., KDD 2022, which trains for a later period rather
    than the next click), averaged over the batch's positions (each weighted by its target's ``weights``: a loss half-life). With
    ``remove_accidental_hits`` the items at positions <= t are masked out of position t's
    softmax (they are never ranked at evaluation: MovieLens has each pair once)."""

    def __init__(self, model, cfg: dict, windows: np.ndarray, weights: np.ndarray, device: torch.device,
                 next_items: int = 1):
        """``windows`` (n_users, L + 1): each user's last L + 1 training items (codes),
        left-padded; ``weights``: the loss weight of each as a target, the same shape (0:
        not a target, e.g. rated below ``train.positive_min_rating``; it is still an input)."""
        self.model, self.cfg, self.device, self.next_items = model, cfg, device, next_items
        self.windows = torch.as_tensor(windows, device=device)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=device)

    def __call__(self, users) -> torch.Tensor:
        u = torch.as_tensor(users, device=self.device)
        window = self.windows[u]
        # shortest left padding in the batch: columns that are padding in every row are dropped
        start = int((window > 0).float().argmax(1).min())
        window = window[:, min(start, window.shape[1] - 2):]
        inputs, targets = window[:, :-1], window[:, 1:]
        out = self.model.user_tower.encode(inputs)
        w = self.weights[u][:, -targets.shape[1]:]
        at = (inputs > 0) & (w > 0)  # an input item, and a target (later, so real too) that counts
        w = w[at]
        logits = (out[at] @ self.model.item_tower().T).div_(self.cfg["temperature"])  # in place: used only here
        target = targets[at] - 1
        if self.cfg["remove_accidental_hits"]:
            b, length = inputs.shape
            steps = torch.arange(length, device=self.device)
            # the first position of each item in each row (length: absent), then item i is
            # masked at position t if it came at or before t; never the target itself
            n_items = logits.shape[1]
            first = torch.full((b, n_items + 2), length, dtype=torch.long, device=self.device)
            first.scatter_reduce_(1, inputs, steps.expand(b, -1), reduce="amin")
            seen = (first[:, None, 1:n_items + 1] <= steps[None, :, None])[at]
            seen[torch.arange(len(target), device=self.device), target] = False
            logits = logits.masked_fill_(seen, float("-inf"))
        if self.next_items == 1:
            loss = F.cross_entropy(logits, target, reduction="none")
        else:
            # the next ``next_items`` items of the history, each a target of position t (one
            # masked out as an earlier input, a repeated pair, does not count)
            logp = torch.log_softmax(logits, dim=1)
            ahead = torch.stack([_shifted(targets, j) for j in range(self.next_items)], dim=-1)[at]  # (N, J)
            picked = logp.gather(1, (ahead - 1).clamp(0, logp.shape[1] - 1))
            real = (ahead > 0) & (ahead <= logp.shape[1]) & torch.isfinite(picked)
            loss = -(torch.where(real, picked, torch.zeros_like(picked)).sum(1) / real.sum(1).clamp_min(1))
        return (loss * w).sum() / max(len(w), 1)
