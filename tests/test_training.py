"""Two-tower losses and training: the classic bugs, guarded."""
import numpy as np
import pytest
import torch

from lib.core import runs as pipeline
from lib.movielens import evaluate as evaluation, losses, steps as study
from lib.movielens.train import InteractionLoss, NegativeSampler, Trainer, build_model
from lib.movielens.towers import pooled_history

MODEL = dict(study.DEFAULTS["model"], embedding_dim=16, hidden=[32])
TRAIN = dict(study.DEFAULTS["train"], batch_size=64, max_epochs=2, threads=1)


def _trainer(data, **loss):
    return Trainer(data, MODEL, dict(study.DEFAULTS["loss"], **loss), TRAIN, seed=0)


def test_explicit_negatives_change_the_loss(synthetic_data):
    """Guards the reference's bug: negatives sampled but never used by the loss."""
    for kind in ("explicit", "mixed"):
        tr = _trainer(synthetic_data, kind=kind, num_negatives=4)
        tr.model.eval()
        users, items = tr.train_users[:32], tr.train_items[:32]
        gen = torch.Generator().manual_seed(0)
        neg_a = tr.sampler.sample(users, 4, gen)
        neg_b = tr.sampler.sample(users, 4, gen)
        with torch.no_grad():
            la = float(tr.loss(users, items, neg_a))
            lb = float(tr.loss(users, items, neg_b))
        assert la != pytest.approx(lb, abs=1e-6), kind
        # and the gradient reaches the negative items' embeddings
        neg_emb = torch.randn(32, 4, 8, requires_grad=True)
        u = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
        losses.sampled_softmax(u, torch.randn(32, 8), neg_emb, 0.1).backward()
        assert neg_emb.grad.abs().sum() > 0


@pytest.mark.parametrize("table", [True, False])
def test_negatives_never_seen_items(synthetic_data, table, monkeypatch):
    monkeypatch.setattr(NegativeSampler, "dense_table", table)
    sampler = NegativeSampler(synthetic_data.matrix("train"))
    assert (sampler.unseen is not None) == table
    users = np.repeat(np.arange(synthetic_data.n_users), 3)
    neg = sampler.sample(users, 20, torch.Generator().manual_seed(0)).numpy()
    seen = synthetic_data.matrix("train")
    assert neg.shape == (len(users), 20)
    assert not seen[np.repeat(users, 20), neg.ravel()].any()
    assert neg.min() >= 0 and neg.max() < synthetic_data.n_items


def test_negative_sampler_maps_each_draw_to_the_rth_unseen_item(monkeypatch):
    """The map r -> item, both ways (binary search over the keys, and the table), on a
    catalog of 7 items: user 0 saw {1, 2, 5}, user 1 saw nothing, user 2 saw {0, 6}."""
    import scipy.sparse as sp
    seen = sp.csr_matrix((np.ones(5), ([0, 0, 0, 2, 2], [5, 1, 2, 6, 0])), shape=(3, 7))
    unseen = {0: [0, 3, 4, 6], 1: list(range(7)), 2: [1, 2, 3, 4, 5]}
    for table in (True, False):
        monkeypatch.setattr(NegativeSampler, "dense_table", table)
        sampler = NegativeSampler(seen)
        users = np.repeat([0, 1, 2], 1)
        draws = sampler.sample(users, 4000, torch.Generator().manual_seed(3)).numpy()
        for u, row in zip(users, draws):
            values, counts = np.unique(row, return_counts=True)
            assert values.tolist() == unseen[u]  # every unseen item, nothing else
            # uniform: a chi-square test (4000 draws) does not reject at the 0.1% level
            from scipy.stats import chisquare
            assert chisquare(counts).pvalue > 1e-3, (u, counts)
    # the two ways give the same items for the same generator state
    monkeypatch.setattr(NegativeSampler, "dense_table", True)
    a = NegativeSampler(seen).sample([0, 2, 1, 0], 50, torch.Generator().manual_seed(9))
    monkeypatch.setattr(NegativeSampler, "dense_table", False)
    b = NegativeSampler(seen).sample([0, 2, 1, 0], 50, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_negative_sampler_refuses_a_user_who_saw_every_item():
    import scipy.sparse as sp
    seen = sp.csr_matrix(np.array([[1, 0, 1], [1, 1, 1]], np.float32))
    with pytest.raises(ValueError, match="user row 1 has seen all 3 items"):
        NegativeSampler(seen)


def test_logq_correction_sign():
    """s(x, y) - log q(y): a popular candidate (high q) must lose logit mass."""
    torch.manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    log_q = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    base = losses.in_batch_softmax(u, v, 1.0)
    # row 0's positive is the popular item: correction raises its relative logit -> lower loss for row 0,
    # while other rows see the popular item as a weaker negative.
    corrected = losses.in_batch_softmax(u, v, 1.0, log_q=log_q)
    manual = torch.nn.functional.cross_entropy(u @ v.T - log_q[None, :], torch.arange(4))
    assert corrected == pytest.approx(float(manual))
    assert corrected != pytest.approx(float(base))
    wrong_sign = torch.nn.functional.cross_entropy(u @ v.T + log_q[None, :], torch.arange(4))
    assert corrected != pytest.approx(float(wrong_sign))


def test_accidental_hits_are_removed():
    u = torch.eye(3)
    v = torch.eye(3)
    ids = torch.tensor([5, 5, 7])  # rows 0 and 1 share their positive item
    plain = losses.in_batch_softmax(u, v, 0.1, item_ids=ids)
    masked = losses.in_batch_softmax(u, v, 0.1, item_ids=ids, remove_accidental_hits=True)
    # with the duplicate masked, each row only competes with the genuinely different item
    logits = (u @ v.T) / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert masked == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.arange(3))))
    assert masked < plain


def test_full_softmax_never_masks_the_target():
    u = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    target = torch.tensor([1, 2])
    mask = torch.ones(2, 6, dtype=torch.bool)  # "everything seen", including the target
    loss = losses.full_softmax(u, items, target, 0.1, exclude_mask=mask)
    assert torch.isfinite(loss) and loss == pytest.approx(0.0, abs=1e-6)


def _plain_full_softmax(u, items, target, t, exclude_mask):
    """``losses.full_softmax`` as plain torch composes it: a new matrix at each step."""
    mask = exclude_mask.clone()
    mask[torch.arange(len(target)), target] = False
    return torch.nn.functional.cross_entropy((u @ items.T / t).masked_fill(mask, float("-inf")), target)


def _plain_in_batch(u, v, t, ids, log_q, user_rows):
    logits = u @ v.T / t
    logits = logits[user_rows] - log_q[None, :]
    same = ids[:, None] == ids[None, :]
    same[torch.arange(len(ids)), torch.arange(len(ids))] = False
    return torch.nn.functional.cross_entropy(logits.masked_fill(same, float("-inf")), torch.arange(len(ids)))


def _fused_in_batch(u, v, t, ids, log_q, user_rows):
    return losses.in_batch_softmax(u, v, t, item_ids=ids, log_q=log_q, remove_accidental_hits=True,
                                   user_rows=user_rows)


@pytest.mark.parametrize("b", [64, 1000])  # a power of two and not: the NLL gradient 1/b rounds
def test_masked_losses_equal_plain_torch_bit_for_bit(b):
    """The in-place, fused masked cross-entropy (``losses.masked_cross_entropy``): the same
    loss and the same gradients, to the last bit, as the masked_fill + cross_entropy
    composition, through a weighted mix (an upstream gradient other than 1). Under
    deterministic algorithms, as training runs (else the index backward's accumulation order
    varies with the threads, between two runs of the same composition too)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        _check_masked_losses_bit_for_bit(b)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _check_masked_losses_bit_for_bit(b: int) -> None:
    g = torch.Generator().manual_seed(b)
    n, d = 300, 16
    u0 = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    items0 = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    target = torch.randint(0, n, (b,), generator=g)
    seen = torch.rand(b, n, generator=g) < 0.3
    ids = torch.randint(0, b // 4, (b,), generator=g)  # repeated items: accidental hits to mask
    log_q = torch.log(torch.rand(b, generator=g))
    rows = torch.randint(0, b // 2, (b,), generator=g)
    runs = []
    for full_softmax, in_batch in ((losses.full_softmax, _fused_in_batch),
                                   (_plain_full_softmax, _plain_in_batch)):
        u, items = u0.clone().requires_grad_(), items0.clone().requires_grad_()
        full = full_softmax(u, items, target, 0.05, seen.clone())
        ub, vb = u0[: b // 2].clone().requires_grad_(), items0[ids].clone().requires_grad_()
        batch = in_batch(ub, vb, 0.05, ids, log_q, rows)
        (0.7 * full + 0.3 * batch).backward()
        runs.append((full.detach(), batch.detach(), u.grad, items.grad, ub.grad, vb.grad))
    fused, plain = runs
    assert bool(seen.any(1).all()) and bool((ids[:, None] == ids[None, :]).sum() > b)  # masks that mask
    for got, want in zip(fused, plain):
        assert torch.equal(got, want)


def test_history_leaves_the_target_out(synthetic_data):
    """The training target must not be part of its own user representation."""
    model = dict(MODEL, history="mean", user_features=False)
    tr = Trainer(synthetic_data, model, dict(study.DEFAULTS["loss"], kind="in_batch"), TRAIN, seed=0)
    tower = tr.model.user_tower
    tower.eval()
    for r in range(5):
        user = torch.as_tensor(tr.train_users[r:r + 1])
        item = torch.as_tensor(tr.train_items[r:r + 1])
        before = pooled_history(tower.hist_emb, tower.hist, user, item).detach().clone()
        with_target = pooled_history(tower.hist_emb, tower.hist, user, None).detach().clone()
        with torch.no_grad():
            tower.hist_emb.weight[item] += 100.0  # change only the target's own embedding
        torch.testing.assert_close(pooled_history(tower.hist_emb, tower.hist, user, item), before)
        # without leave-out the target's embedding does leak in (the test can fail)
        assert not torch.allclose(pooled_history(tower.hist_emb, tower.hist, user, None), with_target)


def _sparse_mm_pooled(embedding, rows, users, leave_out):
    """The pooled history as it was computed before the embedding-bag product (a COO
    ``torch.sparse.mm``): the reference the new product must equal bit for bit."""
    coo = rows.tocoo()
    idx = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
    w = torch.sparse_coo_tensor(idx, torch.as_tensor(coo.data), rows.shape).coalesce()
    total = torch.sparse.mm(w, embedding.weight)
    norm = torch.zeros(len(users)).index_add_(0, w.indices()[0], w.values())
    is_target = w.indices()[1] == leave_out[w.indices()[0]]
    w_t = torch.zeros(len(users)).index_add_(0, w.indices()[0], w.values() * is_target)
    total = total - w_t[:, None] * embedding(leave_out)
    return total / (norm - w_t).clamp_min(1e-6)[:, None]


@pytest.mark.parametrize("canonical", [True, False])
def test_pooled_history_equals_the_sparse_product_bit_for_bit(canonical):
    """The embedding-bag product (forward and backward) gives the same bits as
    torch.sparse.mm, so the speed-up moved no trained figure; a row's columns given out of
    order or twice are summed as the sparse product sums them."""
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    n_users, n_items, d = 300, 500, 24
    hist = sp.random(n_users, n_items, density=0.08, format="csr", random_state=1, dtype=np.float32)
    hist.data = rng.uniform(0.1, 1.0, hist.nnz).astype(np.float32)
    users = torch.as_tensor(rng.integers(0, n_users, 256))
    leave_out = torch.as_tensor(rng.integers(0, n_items, 256))
    rows = hist[users.numpy()]
    if not canonical:  # the same matrix with each row's entries reversed and row 0's first entry split in two
        indptr, indices, data = rows.indptr, rows.indices.copy(), rows.data.copy()
        for r in range(rows.shape[0]):
            indices[indptr[r]:indptr[r + 1]] = indices[indptr[r]:indptr[r + 1]][::-1].copy()
            data[indptr[r]:indptr[r + 1]] = data[indptr[r]:indptr[r + 1]][::-1].copy()
        half = data[0] / np.float32(2)
        data = np.insert(data, 0, half)
        data[1] -= half
        indices = np.insert(indices, 0, indices[0])
        rows = sp.csr_matrix((data, indices, np.concatenate([[0], indptr[1:] + 1])), shape=rows.shape)
        assert not rows.has_canonical_format
    grads = []
    for pooled in (lambda e: pooled_history(e, None, users, leave_out, weights=rows),
                   lambda e: _sparse_mm_pooled(e, rows, users, leave_out)):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(n_items, d)
        out = pooled(emb)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        grads.append((out.detach(), emb.weight.grad))
    (out_new, grad_new), (out_ref, grad_ref) = grads
    assert torch.equal(out_new, out_ref)
    assert torch.equal(grad_new, grad_ref)
    assert float(grad_new.abs().sum()) > 0


def test_training_is_deterministic(synthetic_data):
    def once():
        run = pipeline.configure(data={"dataset": "synthetic", "synthetic": {"n_users": 80, "n_items": 60, "n_ratings": 2500}},
                                 train={"max_epochs": 2, "batch_size": 64, "threads": 1},
                                 evaluate={"bootstrap": 50, "splits": ["test"]}, run="det")
        study.evaluate(run)
        out = (run.dir / "metrics.json").read_text()
        import shutil
        (run.dir / "metrics.json").unlink()
        shutil.rmtree(run.model_dir)  # force a second, independent training
        return out
    import json
    a, b = json.loads(once()), json.loads(once())
    assert a["splits"]["test"]["metrics"] == b["splits"]["test"]["metrics"]
    assert [r["train_loss"] for r in a["train"]["history"]] == [r["train_loss"] for r in b["train"]["history"]]


def test_training_learns_on_planted_data(synthetic_data):
    """A short run beats random ranking on held-out data (the loop really optimises)."""
    run = pipeline.configure(data={"dataset": "synthetic"}, model={"id_embeddings": True},
                             train={"max_epochs": 3, "batch_size": 128, "threads": 1},
                             evaluate={"bootstrap": 50, "splits": ["test"]}, run="learn")
    study.evaluate(run)
    base = pipeline.configure(data={"dataset": "synthetic"}, model={"kind": "random"},
                              evaluate={"bootstrap": 50, "splits": ["test"]}, run="rand")
    study.evaluate(base)
    import json
    tt = json.loads((run.dir / "metrics.json").read_text())["splits"]["test"]["metrics"]
    rnd = json.loads((base.dir / "metrics.json").read_text())["splits"]["test"]["metrics"]
    assert tt["ndcg@10"] > 1.5 * rnd["ndcg@10"]


@pytest.mark.parametrize("logq,hits", [(False, False), (True, False), (True, True)])
def test_in_batch_softmax_distinct_equals_full_matrix(logq, hits):
    """The (distinct users x distinct items) form of the in-batch softmax is the same loss,
    value and gradient, as the (B, B) matrix, with many repeated users and items."""
    g = torch.Generator().manual_seed(0)
    n_rows, n_items, b = 5, 7, 40
    row_of = torch.randint(0, n_rows, (b,), generator=g)
    item_of = torch.randint(0, n_items, (b,), generator=g)
    base = torch.randn(n_rows, n_items, generator=g, dtype=torch.float64) * 3
    log_q_all = torch.log(torch.rand(n_items, generator=g, dtype=torch.float64))
    items, col_of, count = torch.unique(item_of, return_inverse=True, return_counts=True)

    s1 = base.clone().requires_grad_(True)
    full = losses.in_batch_softmax_logits(s1[row_of][:, item_of], item_ids=item_of,
                                          log_q=log_q_all[item_of] if logq else None, remove_accidental_hits=hits)
    full.backward()
    s2 = base.clone().requires_grad_(True)
    fast = losses.in_batch_softmax_distinct(s2[:, items], row_of, col_of, count,
                                            col_log_q=log_q_all[items] if logq else None, remove_accidental_hits=hits)
    fast.backward()
    assert float(fast) == pytest.approx(float(full), rel=1e-10)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-10)
    assert bool((count > 1).any())  # the case that matters: repeated items in the batch


@pytest.mark.parametrize("kind", ["in_batch", "explicit", "mixed"])
@pytest.mark.parametrize("logq,hits", [(False, False), (True, True)])
def test_grouped_fast_path_equals_general_loss(synthetic_data, kind, logq, hits):
    """Features-only towers take a score-matrix shortcut; it must be the same loss."""
    tr = Trainer(synthetic_data, dict(MODEL, dropout=0.0), dict(study.DEFAULTS["loss"], kind=kind, num_negatives=5,
                                                               logq_correction=logq, remove_accidental_hits=hits),
                 TRAIN, seed=0)
    assert tr.model.user_tower.grouped and tr.model.item_tower.grouped
    users, items = tr.train_users[:64], tr.train_items[:64]
    neg = tr.negatives(users, torch.Generator().manual_seed(1))  # None for in_batch
    fast = tr.loss(users, items, neg)
    tr.model.item_tower.grouped = False  # forces the general path
    general = tr.loss(users, items, neg)
    assert float(fast) == pytest.approx(float(general), rel=1e-5)


@pytest.mark.parametrize("logq,hits", [(False, False), (True, True)])
def test_in_batch_loss_embeds_only_the_batch_items_and_gives_the_catalog_loss(synthetic_data, logq, hits,
                                                                              monkeypatch):
    """The in-batch loss embeds the batch's distinct items instead of the catalog: the same
    loss and gradients (no dropout: the draws are the only other difference), for a whole
    batch and for one process's rows of a data-parallel batch; and fewer items embedded."""
    tr = Trainer(synthetic_data, dict(MODEL, dropout=0.0, id_embeddings=True, history="recency"),
                 dict(study.DEFAULTS["loss"], kind="in_batch", logq_correction=logq, remove_accidental_hits=hits),
                 TRAIN, seed=0)
    assert not tr.model.item_tower.grouped
    users, items = tr.train_users[:64], tr.train_items[:64]
    assert len(np.unique(items)) < min(64, synthetic_data.n_items)  # repeated items: accidental hits exist
    embedded = []  # how many items each item-tower call embeds (None: the catalog)
    forward = type(tr.model.item_tower).forward

    def counting_forward(self, rows=None):
        embedded.append(None if rows is None else len(rows))
        return forward(self, rows)
    monkeypatch.setattr(type(tr.model.item_tower), "forward", counting_forward)

    def loss_and_grads(batch_items_only, **rows):
        tr.loss.batch_items_only = batch_items_only
        tr.model.zero_grad(set_to_none=True)
        loss = tr.loss(users[16:48], items[16:48], None, **rows) if rows else tr.loss(users, items, None)
        loss.backward()
        return float(loss), [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]

    for rows in ({}, {"batch_items": items, "first_row": 16}):
        embedded.clear()
        subset, subset_grads = loss_and_grads(True, **rows)
        catalog, catalog_grads = loss_and_grads(False, **rows)
        assert embedded == [len(np.unique(items)), None]
        assert subset == pytest.approx(catalog, rel=1e-6)
        assert len(subset_grads) == len(catalog_grads)
        for a, b in zip(subset_grads, catalog_grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_hard_negatives_are_unseen_top_items_and_the_seen_mask_is_the_same_both_ways(synthetic_data, monkeypatch):
    """Mined hard negatives come from the current model's top unseen items, never a training
    item of the user; the users x items mask kept on the device gives the rows the host
    densifies, and the same training losses to the last bit."""
    loss = dict(study.DEFAULTS["loss"], kind="mixed", num_negatives=3, num_hard_negatives=2, hard_negative_pool=5)
    seen = synthetic_data.matrix("train")
    users = np.concatenate([np.arange(synthetic_data.n_users), [0, 0, 3]])  # repeated users too
    rows = {}
    for dense in (True, False):
        monkeypatch.setattr(InteractionLoss, "dense_seen_mask", dense)
        tr = Trainer(synthetic_data, MODEL, loss, TRAIN, seed=0)
        rows[dense] = tr.loss._seen_rows(torch.as_tensor(users))
        assert (tr.loss.seen_mask is not None) == dense
        assert rows[dense].numpy().tolist() == (seen[users].toarray() > 0).tolist()
        scores = torch.randn(len(users), synthetic_data.n_items, generator=torch.Generator().manual_seed(2))
        top = torch.topk(scores.masked_fill(rows[dense], float("-inf")), 5, dim=1).indices
        hard = tr.loss.hard_negatives(torch.as_tensor(users), scores.clone())
        assert hard.shape == (len(users), 2)
        assert not seen[np.repeat(users, 2), hard.numpy().ravel()].any()
        assert all(set(h.tolist()) <= set(t.tolist()) for h, t in zip(hard, top))
        fitted = Trainer(synthetic_data, MODEL, loss, TRAIN, seed=0).fit(progress=False)
        rows[dense, "losses"] = [r["train_loss"] for r in fitted.history]
    assert torch.equal(rows[True], rows[False])
    assert rows[True, "losses"] == rows[False, "losses"]


def test_evaluation_never_ranks_training_items(synthetic_data):
    """Already-seen items are excluded, so they can never count as hits."""
    from lib.movielens.baselines import Popularity
    model = Popularity().fit(synthetic_data.matrix("train"))
    seen = synthetic_data.matrix("train")
    users = np.arange(synthetic_data.n_users)
    top = evaluation.rank(model, synthetic_data, users, 20, "cpu")
    for u in users:
        assert not set(top[u]) & set(seen[u].indices)
    # and a user's training items that reappear in test are not counted: the split has none
    test = synthetic_data.matrix("test")
    assert (seen.multiply(test)).nnz == 0


def test_popularity_features_come_from_training_only(synthetic_data):
    """Item popularity features: recomputed independently from the training split, and
    unchanged when the validation and test splits change (no future data in the features)."""
    import copy

    from lib.movielens.train import popularity_features
    feats = popularity_features(synthetic_data, 30.0)
    tr = synthetic_data.train
    recent = tr[tr["timestamp"] >= tr["timestamp"].max() - 30 * 86400]
    for col, frame in enumerate((tr, recent)):
        counts = frame["item"].value_counts().reindex(range(synthetic_data.n_items), fill_value=0)
        expected = np.log1p(counts.to_numpy(float))
        expected = (expected - expected.mean()) / (expected.std() + 1e-6)
        assert np.allclose(feats[:, col], expected, atol=1e-5)
    other = copy.copy(synthetic_data)
    other.val = synthetic_data.val.assign(item=0)    # every future rating on item 0
    other.test = synthetic_data.test.assign(item=0)
    assert np.array_equal(popularity_features(other, 30.0), feats)


def test_latest_targets_are_each_users_most_recent_items(synthetic_data):
    """target_selection: latest -> targets are newer than every input item of the user,
    never overlap the input, and every user with >= 2 items keeps one of each."""
    model = dict(MODEL, id_embeddings=True, history="recency")
    tr = Trainer(synthetic_data, model, dict(study.DEFAULTS["loss"], kind="full_softmax"),
                 dict(TRAIN, batching="users", target_selection="latest", target_fraction=0.3), seed=0)
    inputs, targets = tr.split_user_history(np.random.default_rng(0))
    ts = {(u, i): t for u, i, t in synthetic_data.train[["user", "item", "timestamp"]].itertuples(index=False)}
    counts = np.diff(tr.seen.indptr)
    for u in np.flatnonzero(counts >= 2):
        a, b = inputs[u].indices, targets[u].indices
        assert len(a) and len(b) and not set(a) & set(b)
        assert max(ts[(u, i)] for i in a) <= min(ts[(u, i)] for i in b)
    assert targets.nnz == pytest.approx(0.3 * tr.seen.nnz, rel=0.1)


def _small_run(model):
    from lib.core.runs import configure
    return configure(data={"dataset": "synthetic", "synthetic": {"n_users": 120, "n_items": 80, "n_ratings": 4000}},
                     model=model)


def test_user_ids_are_used_without_history():
    """The u1 variant (features + IDs, no history): ID vectors of trained users count; a
    mask built from the history (none here) zeroed them all before."""
    run = _small_run({"kind": "two_tower", "id_embeddings": True, "history": "none", "embedding_dim": 16, "hidden": [16]})
    from lib.movielens import steps
    data = steps.load_data(run)
    torch.manual_seed(0)
    model = build_model(data, run.cfg["model"]).eval()
    tower = model.user_tower
    trained = np.diff(data.matrix("train").indptr) > 0
    assert tower.trained_users.numpy().tolist() == trained.tolist()
    with torch.no_grad():
        tower.id_emb.weight.mul_(100.0)
        u = torch.as_tensor(np.flatnonzero(trained)[:5])
        before = tower(u)
        tower.id_emb.weight.zero_()
        assert not torch.allclose(before, tower(u))


def test_relu_dropout_is_relu_then_dropout():
    """The fused module equals ReLU followed by the byte-mask dropout it replaced: the same
    outputs and input gradient for the same random state; in eval mode, the ReLU."""
    from lib.movielens.towers import ReLUByteDropout
    layer = ReLUByteDropout(0.2)
    assert layer.p == 51 / 256
    x = torch.randn(300, 64, requires_grad=True)
    torch.manual_seed(7)
    y = layer(x)
    y.backward(torch.ones_like(y))
    torch.manual_seed(7)
    words = torch.randint(-2**63, 2**63 - 1, ((x.numel() + 7) // 8,), dtype=torch.int64)
    keep = words.view(torch.uint8)[:x.numel()].view(x.shape) >= layer.threshold
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.relu(x2) * keep.float().mul_(1 / (1 - layer.p))  # the ReLU, then the mask scaled by 1/(1-p)
    y2.backward(torch.ones_like(y2))
    assert torch.equal(y.detach(), y2.detach()) and torch.equal(x.grad, x2.grad)
    kept = (keep & (x > 0)).float().mean().item()
    assert 0.3 < kept < 0.5  # about half positive x 0.8 kept: the mask is used, not all ones
    layer.eval()
    assert torch.equal(layer(x), torch.relu(x))
