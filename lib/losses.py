"""Contrastive retrieval losses on L2-normalised embeddings.

Names follow TensorFlow Recommenders' retrieval task where it has one:
``remove_accidental_hits`` and ``candidate_sampling_probability`` (logQ correction).
All return a scalar mean loss. Written by hand because they are the model-specific part.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_softmax(user: torch.Tensor, pos: torch.Tensor, temperature: float,
                     item_ids: torch.Tensor | None = None,
                     log_q: torch.Tensor | None = None,
                     remove_accidental_hits: bool = False,
                     user_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Each user's positive against the other positives of the batch.

    ``user_rows``: if given, ``user`` holds distinct rows and row b of the batch is
    ``user[user_rows[b]]`` (saves the matmul for users with identical embeddings).
    """
    logits = user @ pos.T / temperature
    if user_rows is not None:
        logits = logits[user_rows]
    return in_batch_softmax_logits(logits, item_ids, log_q, remove_accidental_hits)


def in_batch_softmax_logits(logits: torch.Tensor, item_ids: torch.Tensor | None = None,
                            log_q: torch.Tensor | None = None,
                            remove_accidental_hits: bool = False) -> torch.Tensor:
    """Cross-entropy of a (B, B) logit matrix whose diagonal holds the positives.

    ``log_q``: log sampling probability of each *candidate column* (the batch's items).
    Yi et al. (RecSys 2019) correct the logit as s(x, y_j) - log q_j, so popular items,
    over-represented as in-batch negatives, are not over-penalised. (TFRS issue #219: the
    sign was once inverted.) ``remove_accidental_hits``: a column whose item equals the
    row's positive item (the same item twice in a batch) is not a negative: masked out.
    """
    if log_q is not None:
        logits = logits - log_q[None, :]
    if remove_accidental_hits:
        if item_ids is None:
            raise ValueError("remove_accidental_hits needs item_ids")
        same = item_ids[:, None] == item_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels)


def sampled_softmax(user: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """Explicit negatives: ``neg`` is (B, n_neg, d); each row's positive vs its negatives."""
    pos_logit = (user * pos).sum(-1)
    neg_logit = (user[:, None, :] * neg).sum(-1)  # a batched 1 x d @ d x n is slow on CPU
    return sampled_softmax_logits(pos_logit / temperature, neg_logit / temperature)


def sampled_softmax_logits(pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row's positive logit (B,) against its negatives' (B, n)."""
    logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def full_softmax(user: torch.Tensor, all_items: torch.Tensor, item_ids: torch.Tensor,
                 temperature: float, exclude_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Score the whole catalog; ``exclude_mask`` (B, n_items) masks the user's *other*
    training positives (accidental hits), never the target itself."""
    logits = user @ all_items.T / temperature
    if exclude_mask is not None:
        mask = exclude_mask.clone()
        mask[torch.arange(len(item_ids), device=mask.device), item_ids] = False
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, item_ids)
