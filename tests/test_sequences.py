"""The sequence towers (SASRec, GRU4Rec), the linear history tower and the loss half-life:
no future item in a history, causal encoders, the next-item loss checked by hand, the
linear score as one dot product, and the time weights."""
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from lib.core.params import ParamsError
from lib.movielens import evaluate as evaluation, steps as study
from lib.movielens.sequences import NextItemLoss, SequenceUserTower, SharedItemTower, padded_histories, tie_break
from lib.movielens.train import Trainer, loss_weights, split_user_history

SEQ_MODEL = dict(study.DEFAULTS["model"], embedding_dim=8, max_sequence_length=6, dropout=0.0)


def _towers(architecture: str, n_items: int = 20, n_users: int = 3):
    cfg = dict(SEQ_MODEL, architecture=architecture)
    torch.manual_seed(0)
    items = SharedItemTower(n_items, cfg)
    user = SequenceUserTower(n_users, items.codes, cfg)
    user.eval()
    return user, items


def test_histories_are_time_ordered_left_padded_and_start_coded():
    log = pd.DataFrame({"user": [0, 0, 0, 1, 1, 1, 1, 1], "item": [5, 3, 9, 1, 2, 3, 4, 6],
                        "timestamp": [30, 10, 20, 1, 2, 3, 4, 5]})
    codes, weights = padded_histories(log, n_users=3, n_items=10, length=4, values=np.arange(8.0) + 1)
    start = 11  # n_items + 1
    # user 0: 3 items fit whole (start code first), in time order; user 1: the last 4 of 5; user 2: none
    np.testing.assert_array_equal(codes, [[start, 3 + 1, 9 + 1, 5 + 1], [2 + 1, 3 + 1, 4 + 1, 6 + 1], [0, 0, 0, start]])
    np.testing.assert_array_equal(weights, [[0, 2, 3, 1], [5, 6, 7, 8], [0, 0, 0, 0]])


def test_ties_are_not_ordered_by_item_index():
    """Within one second the order is a fixed hash of the pair, the same at every call."""
    users, items = np.zeros(200, np.int64), np.arange(200)
    key = tie_break(users, items)
    np.testing.assert_array_equal(key, tie_break(users, items))
    order = np.argsort(key)
    assert 0.3 < np.mean(np.diff(order) > 0) < 0.7   # neither ascending nor descending item index


def test_sequence_histories_hold_training_items_only(synthetic_data):
    """No validation or test interaction in what the encoder reads or learns to predict."""
    model = dict(study.DEFAULTS["model"], architecture="sasrec", embedding_dim=8, max_sequence_length=500)
    train = dict(study.DEFAULTS["train"], batching="sequences", max_epochs=1)
    loss = dict(study.DEFAULTS["loss"], kind="full_softmax", temperature=1.0)
    tr = Trainer(synthetic_data, model, loss, train, seed=0)
    d = synthetic_data
    for codes in (tr.model.user_tower.histories.numpy(), tr.sequence_loss.windows.numpy()):
        rows, cols = np.nonzero((codes > 0) & (codes <= d.n_items))
        got = sp.csr_matrix((np.ones(len(rows)), (rows, codes[rows, cols] - 1)), shape=(d.n_users, d.n_items))
        assert (got != (d.matrix("train") > 0)).nnz == 0  # every training item, nothing else (no item is cut off)


@pytest.mark.parametrize("architecture", ["sasrec", "gru4rec"])
def test_encoders_are_causal_and_padding_free(architecture):
    user, _ = _towers(architecture)
    codes = torch.tensor([[0, 21, 3, 5, 7, 2], [0, 0, 0, 21, 3, 5]])
    out = user.encode(codes)
    changed = codes.clone()
    changed[0, 5] = 11
    torch.testing.assert_close(user.encode(changed)[0, :5], out[0, :5])   # position t reads <= t only
    assert not torch.allclose(user.encode(changed)[0, 5], out[0, 5])       # (and the last one does change)
    torch.testing.assert_close(user.encode(codes[:, 1:]), out[:, 1:])      # less padding, same outputs
    assert torch.all(out[1, :3] == 0)                                      # padding positions give nothing


def test_gru_reads_only_the_real_items():
    user, _ = _towers("gru4rec")
    out = user.encode(torch.tensor([[0, 0, 21, 3, 5, 7]]))
    with torch.no_grad():
        ref, _ = user.gru(user.item_codes(torch.tensor([[21, 3, 5, 7]])))
    torch.testing.assert_close(out[0, 2:], ref[0])


def test_user_vector_is_the_last_position():
    user, _ = _towers("sasrec", n_users=2)
    codes = np.array([[0, 0, 21, 3, 5, 7], [0, 0, 0, 0, 0, 21]])
    user.set_histories(codes)
    torch.testing.assert_close(user(torch.tensor([0, 1])), user.encode(torch.as_tensor(codes))[:, -1])
    assert user(torch.tensor([1])).abs().sum() > 0  # no history: the start code's output, not zeros


@pytest.mark.parametrize("hits,ahead", [(False, 1), (True, 1), (True, 3)])
def test_next_item_loss_by_hand(hits, ahead):
    """Position t's output against the item at t + 1 (``ahead`` > 1: the mean log-likelihood
    of the items at t + 1 ... t + ahead), over the whole catalog; the weights scale each
    position; the start code predicts the first item; with accidental hits removed, the
    items up to t leave position t's softmax."""
    n_items = 6
    user, items = _towers("gru4rec", n_items=n_items, n_users=2)
    user.train()
    windows = np.array([[0, 7, 1, 2, 3], [5, 3, 2, 4, 5]])  # user 1's history was cut (no start code)
    weights = np.array([[0, 0, 1.0, 0.5, 2.0], [0, 1.0, 1.0, 0.0, 1.0]], np.float32)
    cfg = dict(study.DEFAULTS["loss"], temperature=0.5, remove_accidental_hits=hits)
    model = torch.nn.Module()
    model.user_tower, model.item_tower = user, items
    got = NextItemLoss(model, cfg, windows, weights, torch.device("cpu"), next_items=ahead)(np.array([0, 1]))
    out = user.encode(torch.as_tensor(windows[:, :-1]))
    terms = []
    for b in range(2):
        for t in range(4):
            w = weights[b, t + 1]
            if windows[b, t] == 0 or w == 0:
                continue
            logits = out[b, t] @ items().T / 0.5
            if hits:
                earlier = [c - 1 for c in windows[b, :t + 1] if 1 <= c <= n_items and c != windows[b, t + 1]]
                logits[earlier] = float("-inf")
            up_to_t = {c - 1 for c in windows[b, :t + 1]}
            following = [c - 1 for j, c in enumerate(windows[b, t + 1:t + 1 + ahead])
                         if j == 0 or not (hits and c - 1 in up_to_t)]  # a repeat masked as an input: not a target
            terms.append(-w * torch.log_softmax(logits, 0)[following].mean())
    torch.testing.assert_close(got, torch.stack(terms).sum() / len(terms))


def test_linear_tower_scores_are_one_dot_product(synthetic_data):
    model = dict(study.DEFAULTS["model"], architecture="linear", history="mean", embedding_dim=8)
    loss = dict(study.DEFAULTS["loss"], kind="full_softmax", temperature=1.0)
    train = dict(study.DEFAULTS["train"], batching="users", max_epochs=1)
    tt = Trainer(synthetic_data, model, loss, train, seed=0).model
    with torch.no_grad():
        tt.item_tower.bias.copy_(torch.randn(synthetic_data.n_items))
        users = torch.arange(5)
        u = tt.user_tower(users)
        hist = tt.user_tower.hist[users.numpy()].toarray()
        pooled = (hist @ tt.user_tower.hist_emb.weight.numpy()) / hist.sum(1, keepdims=True)
        expected = pooled @ tt.item_tower.out_emb.weight.numpy().T + tt.item_tower.bias.numpy()[None]
        scores = (u @ tt.item_tower().T).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    cold = np.flatnonzero(np.diff(synthetic_data.matrix("train").indptr) == 0)
    if len(cold):  # a user without history is scored by the item biases alone
        with torch.no_grad():
            np.testing.assert_allclose((tt.user_tower(torch.as_tensor(cold[:1])) @ tt.item_tower().T).numpy()[0],
                                       tt.item_tower.bias.numpy(), atol=1e-6)


def test_loss_half_life_weighs_targets_by_age():
    end = 100 * 86400.0
    w = loss_weights(np.array([end, end - 10 * 86400, end - 20 * 86400]), end, half_life_days=10.0)
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(loss_weights(np.array([0.0, end]), end, None), [1.0, 1.0])


def test_user_batches_carry_target_weights():
    hist = sp.csr_matrix(np.array([[1, 1, 1, 1, 0], [0, 1, 1, 0, 1]], np.float32))
    rating, ts = np.full(hist.nnz, 5.0, np.float32), np.arange(hist.nnz, dtype=np.float64)
    weight = np.linspace(0.1, 0.7, hist.nnz).astype(np.float32)
    rng = np.random.default_rng(0)
    inputs, targets = split_user_history(hist, rating, ts, 0.5, "random", 0, True, np.random.default_rng(0))
    _, weighted = split_user_history(hist, rating, ts, 0.5, "random", 0, True, rng, target_weights=weight)
    assert (weighted > 0).toarray().tolist() == (targets > 0).toarray().tolist()  # the same targets
    assert inputs.nnz and targets.nnz
    full = sp.csr_matrix((weight, hist.indices, hist.indptr), shape=hist.shape)
    np.testing.assert_allclose(weighted.toarray(), full.toarray() * (targets.toarray() > 0))


def test_sequence_and_linear_towers_train_and_rank(synthetic_data):
    """Each trains (its loss falls) and the evaluation code scores it like any two-tower
    (training items never ranked)."""
    loss = dict(study.DEFAULTS["loss"], kind="full_softmax", temperature=1.0, remove_accidental_hits=True)
    for architecture, batching, extra in [("sasrec", "sequences", {}), ("gru4rec", "sequences", {}),
                                          ("linear", "users", {"history": "mean"})]:
        model = dict(study.DEFAULTS["model"], architecture=architecture, embedding_dim=16, max_sequence_length=20,
                     **extra)
        train = dict(study.DEFAULTS["train"], batching=batching, max_epochs=3, learning_rate=0.01)
        tr = Trainer(synthetic_data, model, loss, train, seed=0)
        result = tr.fit(progress=False)
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
        users = np.arange(synthetic_data.n_users)
        top = evaluation.rank(tr.model, synthetic_data, users, 10, "cpu")
        seen = synthetic_data.matrix("train")
        assert not any(seen[u, i] for u, row in zip(users, top) for i in row if i >= 0)


@pytest.mark.parametrize("model,train,message", [
    ({"architecture": "linear"}, {"batching": "users"}, "pools the user's history"),
    ({"architecture": "sasrec"}, {"batching": "users"}, "trains with train.batching: sequences"),
    ({"architecture": "mlp"}, {"batching": "sequences"}, "trains with train.batching: interactions or users"),
    ({"architecture": "gru4rec", "history": "mean"}, {"batching": "sequences"}, "reads the time-ordered history"),
    ({"architecture": "sasrec", "embedding_dim": 10, "attention_heads": 3}, {"batching": "sequences"}, "multiple of"),
])
def test_architecture_rules(model, train, message):
    cfg = {"model": dict(study.DEFAULTS["model"], **model), "train": dict(study.DEFAULTS["train"], **train),
           "loss": dict(study.DEFAULTS["loss"], kind="full_softmax")}
    with pytest.raises(ParamsError, match=message):
        study.validate(cfg)


def test_loss_half_life_needs_target_batches():
    cfg = {"loss": dict(study.DEFAULTS["loss"], half_life_days=30.0)}
    with pytest.raises(ParamsError, match="half_life_days"):
        study.validate(cfg)



def test_the_multinomial_loss_weighs_each_target(synthetic_data):
    """User batches with a loss half-life: each target's log-likelihood times its weight,
    summed per user over the count of its targets (weights of 1: the unweighted loss)."""
    from lib.movielens.train import MultinomialLoss
    model = dict(study.DEFAULTS["model"], history="mean", id_embeddings=True)
    loss_cfg = dict(study.DEFAULTS["loss"], kind="full_softmax", remove_accidental_hits=True)
    tr = Trainer(synthetic_data, model, loss_cfg, dict(study.DEFAULTS["train"], batching="users"), seed=0)
    tr.model.eval()
    inputs, targets = tr.split_user_history(np.random.default_rng(0))
    users = np.flatnonzero(np.diff(targets.indptr) > 0)[:6]
    weighted = targets.copy()
    weighted.data = np.linspace(0.1, 1.0, weighted.nnz).astype(np.float32)
    loss = MultinomialLoss(tr.model, loss_cfg, torch.device("cpu"))
    with torch.no_grad():
        got, plain = float(loss(users, inputs, weighted)), float(loss(users, inputs, targets))
        logits = tr.model.user_tower(torch.as_tensor(users), history=inputs[users]) @ tr.model.item_tower().T
        logits = logits / loss_cfg["temperature"]
        logits = logits.masked_fill(torch.as_tensor(inputs[users].toarray() > 0), float("-inf"))
        logp = torch.log_softmax(logits, 1).numpy()
    rows = [weighted[u] for u in users]
    expected = -np.mean([(r.data * logp[k, r.indices]).sum() / r.nnz for k, r in enumerate(rows)])
    unweighted = -np.mean([logp[k, targets[u].indices].sum() / targets[u].nnz for k, u in enumerate(users)])
    assert got == pytest.approx(expected, rel=1e-5) and plain == pytest.approx(unweighted, rel=1e-5)
    assert abs(got - plain) > 0.1 * abs(plain)  # the weights matter
