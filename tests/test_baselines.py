"""Behavioural tests for lib.movielens.baselines on small planted data sets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lib.movielens.baselines import BASELINES, BPR, EASE, IALS, ItemKNN, Popularity, Random, RecentPopularity

N_USERS, N_ITEMS = 50, 40
DAY = 86400

# small, fast hyperparameters for every registered model
FAST_PARAMS = {
    "random": dict(seed=1),
    "popularity": dict(),
    "recent_popularity": dict(window_days=10.0),
    "itemknn": dict(k=10),
    "ease": dict(l2=10.0),
    "bpr": dict(factors=8, learning_rate=0.05, regularization=0.01, iterations=30, seed=3),
    "ials": dict(factors=8, regularization=0.1, alpha=10.0, iterations=5, seed=3),
}
PERSONALISED = ["itemknn", "ease", "bpr", "ials"]


def _to_df(X: sp.csr_matrix, timestamps: np.ndarray | None = None) -> pd.DataFrame:
    coo = X.tocoo()
    ts = np.arange(coo.nnz) * 3600 if timestamps is None else timestamps
    return pd.DataFrame(
        {
            "user": coo.row.astype(np.int64),
            "item": coo.col.astype(np.int64),
            "rating": np.full(coo.nnz, 4, dtype=np.int64),
            "timestamp": np.asarray(ts, dtype=np.int64),
        }
    )


def _random_matrix(seed: int = 0, density: float = 0.15, empty_users=()) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < density).astype(np.float32)
    dense[:, 0] = 0
    dense[: N_USERS // 2, 0] = 1  # item 0 is by far the most popular
    for u in empty_users:
        dense[u] = 0
    return sp.csr_matrix(dense)


def _fit(name: str, X: sp.csr_matrix, df: pd.DataFrame | None = None):
    if df is None:
        df = _to_df(X)
    return BASELINES[name](**FAST_PARAMS[name]).fit(X, df)


# --------------------------------------------------------------------------- #
# interface
# --------------------------------------------------------------------------- #
def test_registry_names_match_classes():
    assert set(BASELINES) == {
        "random", "popularity", "recent_popularity", "itemknn", "ease", "bpr", "ials"
    }
    for name, cls in BASELINES.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_unknown_hyperparameter_raises_type_error(name):
    with pytest.raises(TypeError):
        BASELINES[name](definitely_not_a_param=1)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_score_shape_dtype_finite_and_deterministic(name):
    X = _random_matrix(seed=1)
    users = np.array([0, 7, 3, 49])
    m1 = _fit(name, X)
    s1 = m1.score(users)
    assert s1.shape == (4, N_ITEMS)
    assert s1.dtype == np.float32
    assert np.all(np.isfinite(s1))
    assert m1.fit(X, _to_df(X)) is m1  # fit returns self
    s2 = _fit(name, X).score(users)
    assert np.array_equal(s1, s2)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_batch_independence(name):
    X = _random_matrix(seed=2)
    m = _fit(name, X)
    full = m.score(np.arange(N_USERS))
    assert np.allclose(m.score(np.array([3])), full[3:4], rtol=1e-6, atol=1e-7)
    assert np.allclose(m.score(np.array([10, 3])), full[[10, 3]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_empty_user_rows_get_finite_scores(name):
    X = _random_matrix(seed=3, empty_users=(5, 17))
    m = _fit(name, X)
    s = m.score(np.array([5, 17, 0]))
    assert np.all(np.isfinite(s))
    if name in PERSONALISED:
        pop = np.asarray(X.sum(axis=0)).ravel()
        # fallback = popularity: most popular item first, same order as counts
        assert np.argmax(s[0]) == np.argmax(pop) == 0
        assert np.array_equal(s[0], s[1])
        assert np.corrcoef(s[0], pop)[0, 1] > 0.999


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError):
        Popularity().score(np.array([0]))


def test_out_of_range_user_raises():
    m = Popularity().fit(_random_matrix())
    with pytest.raises(IndexError):
        m.score(np.array([N_USERS]))


# --------------------------------------------------------------------------- #
# random
# --------------------------------------------------------------------------- #
def test_random_reproducible_by_seed_and_uniform():
    X = _random_matrix()
    a = Random(seed=5).fit(X).score(np.arange(N_USERS))
    b = Random(seed=5).fit(X).score(np.arange(N_USERS))
    c = Random(seed=6).fit(X).score(np.arange(N_USERS))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(Random(seed=5).fit(X).score(np.array([3]))[0], a[3])
    assert a.min() >= 0.0 and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.03
    # rows differ between users (not one vector broadcast)
    assert not np.array_equal(a[0], a[1])


# --------------------------------------------------------------------------- #
# popularity
# --------------------------------------------------------------------------- #
def test_popularity_ranks_most_interacted_item_first():
    X = _random_matrix(seed=4)
    s = Popularity().fit(X).score(np.arange(N_USERS))
    counts = np.asarray(X.sum(axis=0)).ravel()
    assert np.all(np.argmax(s, axis=1) == 0)
    assert np.array_equal(s[0], counts.astype(np.float32))


# --------------------------------------------------------------------------- #
# recent popularity
# --------------------------------------------------------------------------- #
def _recency_data():
    """Item 0: 30 users, all long ago. Item 1: 5 users, all in the final week.
    Items 2 and 3: 2 recent users each; item 2 has 10 old users, item 3 none."""
    rows = []
    t_end = 1_000 * DAY
    for u in range(30):
        rows.append((u, 0, 100 * DAY + u))
    for u in range(5):
        rows.append((u, 1, t_end - u * 3600))
    for u in range(10, 12):
        rows.append((u, 2, t_end - DAY))
        rows.append((u + 20, 3, t_end - DAY))
    for u in range(12, 22):
        rows.append((u, 2, 200 * DAY))
    rows.append((49, 4, t_end))  # defines the end of the training period
    df = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    df["rating"] = 5
    X = sp.csr_matrix(
        (np.ones(len(df), np.float32), (df.user, df.item)), shape=(N_USERS, N_ITEMS)
    )
    return X, df


def test_recent_popularity_prefers_recently_popular_item():
    X, df = _recency_data()
    s = RecentPopularity(window_days=7).fit(X, df).score(np.array([0]))[0]
    assert s[1] > s[0]  # popular now beats popular long ago
    assert np.argmax(s) == 1
    assert s[2] > s[3]  # equal recent counts: all-time popularity breaks the tie
    assert s[3] > s[5]  # any recent interaction beats none
    # all-time popularity alone orders the other way round
    pop = Popularity().fit(X).score(np.array([0]))[0]
    assert pop[0] > pop[1]


def test_recent_popularity_huge_window_equals_popularity_order():
    X, df = _recency_data()
    s = RecentPopularity(window_days=10_000).fit(X, df).score(np.array([0]))[0]
    counts = np.asarray(X.sum(axis=0)).ravel()
    nz = counts > 0
    assert np.array_equal(np.argsort(-s[nz], kind="stable"), np.argsort(-counts[nz], kind="stable"))


def test_recent_popularity_requires_train_df():
    X, _ = _recency_data()
    with pytest.raises(ValueError):
        RecentPopularity(window_days=7).fit(X, None)


# --------------------------------------------------------------------------- #
# itemknn / ease: planted co-occurrence
# --------------------------------------------------------------------------- #
def _cooccurrence_data(seed: int):
    """Items A=0 and B=1 always co-occur for users 0..29 (who also have random
    noise items); probe user 49 has only A in training."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.1).astype(np.float32)
    dense[:, :2] = 0
    dense[:30, 0] = 1
    dense[:30, 1] = 1
    dense[49] = 0
    dense[49, 0] = 1
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name,params", [("itemknn", dict(k=5)), ("itemknn", dict(k=40, shrink=2.0)),
                                         ("ease", dict(l2=5.0)), ("ease", dict(l2=50.0))])
def test_planted_cooccurrence_recovered(seed, name, params):
    X = _cooccurrence_data(seed)
    m = BASELINES[name](**params).fit(X)
    s = m.score(np.array([49]))[0]
    seen = X[49].toarray().ravel() > 0
    s_unseen = np.where(seen, -np.inf, s)
    assert np.argmax(s_unseen) == 1


def test_itemknn_keeps_at_most_k_neighbours_and_matches_cosine():
    X = _random_matrix(seed=5)
    k = 3
    m = ItemKNN(k=k).fit(X)
    S = m.similarity_.toarray()
    assert np.all((S > 0).sum(axis=0) <= k)
    assert np.all(np.diag(S) == 0)
    Xd = X.toarray().astype(np.float64)
    C = Xd.T @ Xd
    n = np.sqrt(np.diag(C))
    cos = C / np.maximum(np.outer(n, n), 1e-12)
    np.fill_diagonal(cos, 0)
    for j in range(N_ITEMS):
        kept = np.flatnonzero(S[:, j])
        assert np.allclose(S[kept, j], cos[kept, j], rtol=1e-5)
        if kept.size:  # kept neighbours are the k largest similarities
            assert S[kept, j].min() >= np.sort(cos[:, j])[-k] - 1e-6
    # score is X_u @ S
    assert np.allclose(m.score(np.arange(N_USERS)), Xd @ S, rtol=1e-5, atol=1e-6)


def test_ease_matches_closed_form():
    X = _random_matrix(seed=6)
    l2 = 7.0
    Xd = X.toarray().astype(np.float64)
    P = np.linalg.inv(Xd.T @ Xd + l2 * np.eye(N_ITEMS))
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    s = EASE(l2=l2).fit(X).score(np.arange(N_USERS))
    assert np.allclose(s, Xd @ B, rtol=1e-4, atol=1e-5)


def test_ease_huge_l2_is_finite_and_tends_to_cooccurrence_counts():
    X = _random_matrix(seed=7)
    l2 = 1e6
    s = EASE(l2=l2).fit(X).score(np.arange(N_USERS))
    assert np.all(np.isfinite(s))
    Xd = X.toarray().astype(np.float64)
    C = Xd.T @ Xd
    np.fill_diagonal(C, 0)
    # B -> (X^T X)_offdiag / l2 as l2 -> inf
    assert np.allclose(s * l2, Xd @ C, rtol=1e-3, atol=1e-2)


# --------------------------------------------------------------------------- #
# bpr / ials: planted block structure, held-out items
# --------------------------------------------------------------------------- #
def _block_data(seed: int = 0):
    """4 user groups x 4 item blocks of 10; each user has 7 of their block's items
    in training and 2 held out; plus light noise outside the block."""
    rng = np.random.default_rng(seed)
    n_blocks, block = 4, N_ITEMS // 4
    train = np.zeros((N_USERS, N_ITEMS), np.float32)
    heldout = []
    for u in range(N_USERS):
        g = u % n_blocks
        items = rng.permutation(np.arange(g * block, (g + 1) * block))
        train[u, items[:7]] = 1
        heldout.append(items[7:9])
        noise = rng.integers(0, N_ITEMS)
        if noise // block != g:
            train[u, noise] = 1
    return sp.csr_matrix(train), heldout


def _hit_rate_at_k(scores: np.ndarray, X: sp.csr_matrix, heldout, k: int = 5) -> float:
    s = np.where(X.toarray() > 0, -np.inf, scores)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.mean([np.isin(h, t).any() for h, t in zip(heldout, top)]))


@pytest.mark.parametrize("name", ["bpr", "ials", "itemknn", "ease"])
def test_personalised_models_beat_random_on_heldout_blocks(name):
    X, heldout = _block_data()
    users = np.arange(N_USERS)
    params = dict(FAST_PARAMS[name])
    if name == "bpr":
        params["iterations"] = 100
    hr_model = _hit_rate_at_k(BASELINES[name](**params).fit(X).score(users), X, heldout)
    hr_rand = _hit_rate_at_k(Random(seed=0).fit(X).score(users), X, heldout)
    # random: ~1 - C(30,5)/C(32,5) ~ 0.3
    assert hr_rand < 0.5
    assert hr_model >= 0.8
    assert hr_model > hr_rand + 0.3


@pytest.mark.parametrize("cls", [BPR, IALS])
def test_factor_models_deterministic_and_embedding_consistent(cls):
    X = _random_matrix(seed=8, empty_users=(4,))
    params = FAST_PARAMS[cls.name]
    a = cls(**params).fit(X)
    b = cls(**params).fit(X)
    users = np.arange(N_USERS)
    assert np.array_equal(a.score(users), b.score(users))
    assert np.array_equal(a.user_embeddings(), b.user_embeddings())
    U, V = a.user_embeddings(), a.item_embeddings()
    assert U.dtype == np.float32 and V.dtype == np.float32
    assert U.shape == (N_USERS, V.shape[1]) and V.shape[0] == N_ITEMS
    assert np.allclose(a.score(users), U @ V.T, rtol=1e-6, atol=1e-7)
    # different seed -> different model
    other = dict(params, seed=params["seed"] + 1)
    assert not np.array_equal(a.score(users), cls(**other).fit(X).score(users))


def test_bpr_scores_equal_implicit_scores_including_bias_column():
    X = _random_matrix(seed=9)
    m = BPR(**FAST_PARAMS["bpr"]).fit(X)
    uf, itf = m.model_.user_factors, m.model_.item_factors
    assert uf.shape[1] == FAST_PARAMS["bpr"]["factors"] + 1  # implicit's bias column
    assert np.allclose(uf[:, -1], 1.0)
    assert np.allclose(m.score(np.arange(N_USERS)), uf @ itf.T, rtol=1e-6, atol=1e-7)


def test_ials_uses_confidence_one_plus_alpha():
    """At convergence the item factors solve the Hu et al. normal equations with
    c_ui = 1 + alpha on observed entries (not implicit's raw c_ui = alpha)."""
    X = _random_matrix(seed=10, density=0.2)
    alpha, lam, f = 3.0, 0.1, 4
    m = IALS(factors=f, regularization=lam, alpha=alpha, iterations=30, seed=0).fit(X)
    U = m.model_.user_factors.astype(np.float64)
    V = m.model_.item_factors.astype(np.float64)
    Xd = X.toarray()

    def max_rel_err(c_pos):
        err = 0.0
        for i in range(N_ITEMS):
            p = (Xd[:, i] > 0).astype(np.float64)
            c = np.where(p > 0, c_pos, 1.0)
            sol = np.linalg.solve(U.T @ (c[:, None] * U) + lam * np.eye(f), U.T @ (c * p))
            err = max(err, np.abs(sol - V[i]).max() / np.abs(V[i]).max())
        return err

    assert max_rel_err(1.0 + alpha) < 1e-2
    assert max_rel_err(alpha) > 5e-2
