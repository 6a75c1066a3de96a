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
                     user_rows: torch.Tensor | None = None, first_row: int = 0) -> torch.Tensor:
    """Each user's positive against the other positives of the batch.

    ``user_rows``: if given, ``user`` holds distinct rows and row b of the batch is
    ``user[user_rows[b]]`` (saves the matmul for users with identical embeddings).
    ``pos`` may be the positives of a larger batch whose rows ``first_row ...`` are these
    users (data-parallel training: the global batch's positives are every process's
    negatives); ``item_ids`` and ``log_q`` then describe its columns.
    """
    logits = (user @ pos.T).div_(temperature)  # in place: the product is used only here
    if user_rows is not None:
        logits = logits[user_rows]
    return _in_batch_cross_entropy(logits, item_ids, log_q, remove_accidental_hits, first_row)


def in_batch_softmax_logits(logits: torch.Tensor, item_ids: torch.Tensor | None = None,
                            log_q: torch.Tensor | None = None,
                            remove_accidental_hits: bool = False, first_row: int = 0) -> torch.Tensor:
    """Cross-entropy of a (b, B) logit matrix whose entry (r, first_row + r) holds row r's
    positive (b = B and ``first_row`` 0: the diagonal of a square batch).

    ``log_q``: log sampling probability of each *candidate column* (the batch's items).
    Yi et al. (RecSys 2019) correct the logit as s(x, y_j) - log q_j, so popular items,
    over-represented as in-batch negatives, are not over-penalised. (TFRS issue #219: the
    sign was once inverted.) ``remove_accidental_hits``: a column whose item equals the
    row's positive item (the same item twice in a batch) is not a negative: masked out.
    """
    if log_q is not None:
        logits = logits - log_q[None, :]
    elif remove_accidental_hits:
        logits = logits.clone()  # the mask goes in place: the caller's matrix stays as it is
    return _in_batch_cross_entropy(logits, item_ids, None, remove_accidental_hits, first_row)


def _in_batch_cross_entropy(logits: torch.Tensor, item_ids: torch.Tensor | None, log_q: torch.Tensor | None,
                            remove_accidental_hits: bool, first_row: int) -> torch.Tensor:
    """``in_batch_softmax_logits`` on a ``logits`` matrix of its own: overwritten in place."""
    if log_q is not None:
        logits = logits.sub_(log_q[None, :])
    rows = torch.arange(logits.shape[0], device=logits.device)
    labels = rows + first_row
    if remove_accidental_hits:
        if item_ids is None:
            raise ValueError("remove_accidental_hits needs item_ids")
        same = item_ids[labels][:, None] == item_ids[None, :]
        same[rows, labels] = False
        return masked_cross_entropy(logits, labels, same)
    return F.cross_entropy(logits, labels)


class _MaskedCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(logits.masked_fill(mask, -inf), labels)`` (mean), the mask applied in
    place, with the same kernels forward and backward (log-softmax, NLL) minus one: the
    masked_fill backward, which would zero the masked entries of a gradient whose masked
    entries are exactly zero already (softmax backward: g - exp(-inf) * sum(g) = +0, and the
    NLL gradient is zero off the label, never masked). Same loss and gradients bit for bit
    (tests check it), one pass fewer over the (B, n) matrix forward and one backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # consumed, not marked dirty: the gradient returned is the one with respect to the
        # logits before the mask (zero at masked entries), so the graph needs no new version
        logits.masked_fill_(mask, float("-inf"))
        logp = torch.log_softmax(logits, dim=1)
        loss, total_weight = torch.ops.aten.nll_loss_forward(logp, labels, None, 1, -100)  # 1: mean
        ctx.save_for_backward(logp, labels, total_weight)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, labels, total_weight = ctx.saved_tensors
        g = torch.ops.aten.nll_loss_backward(grad, logp, labels, None, 1, -100, total_weight)
        return torch.ops.aten._log_softmax_backward_data(g, logp, 1, logp.dtype), None, None


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` with the entries under ``mask`` at -inf (never a label:
    the caller clears it). ``logits`` is overwritten: pass a matrix no one else reads (a
    product, not a leaf)."""
    return _MaskedCrossEntropy.apply(logits, labels, mask)


def in_batch_softmax_distinct(scores: torch.Tensor, row_of: torch.Tensor, col_of: torch.Tensor,
                              col_count: torch.Tensor, col_log_q: torch.Tensor | None = None,
                              remove_accidental_hits: bool = False) -> torch.Tensor:
    """The in-batch softmax of ``in_batch_softmax_logits`` computed without the (B, B) matrix.

    ``scores`` (R, C): logits of R distinct query rows against C distinct candidate items;
    batch row b is query ``row_of[b]`` with positive item ``col_of[b]``; ``col_count[c]``
    is how many of the batch's positives are item c. A row's softmax denominator over the
    B batch columns is then a sum over C distinct items weighted by their counts, so the
    work is R x C instead of B x B (ML-1M, B = 1024: about 240 x 700 instead of 1024 x 1024).
    Exact, not an approximation; a test checks it against the (B, B) version.

    ``remove_accidental_hits``: the other copies of row b's own positive item are not
    negatives, so that item counts once in row b's denominator instead of ``col_count``.
    """
    logits = scores if col_log_q is None else scores - col_log_q[None, :]
    weighted = logits + torch.log(col_count.to(logits.dtype))[None, :]
    top = weighted.max(dim=1).values.detach()
    total = torch.exp(weighted - top[:, None]).sum(1)[row_of]
    pos = logits[row_of, col_of]
    if remove_accidental_hits:
        total = total - (col_count[col_of] - 1).to(logits.dtype) * torch.exp(pos - top[row_of])
    return (top[row_of] + torch.log(total) - pos).mean()


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
    logits = (user @ all_items.T).div_(temperature)  # in place: the product is used only here
    if exclude_mask is not None:
        mask = exclude_mask.clone()
        mask[torch.arange(len(item_ids), device=mask.device), item_ids] = False
        return masked_cross_entropy(logits, item_ids, mask)
    return F.cross_entropy(logits, item_ids)
