"""Dataset-agnostic baseline recommenders sharing one interface.

Every recommender in :data:`BASELINES` follows the same protocol::

    model = BASELINES[name](**hyperparams)      # unknown kwarg -> TypeError
    model.fit(train_matrix, train_df=None)      # returns self
    scores = model.score(user_idx)              # float32, (len(user_idx), n_items)

* ``train_matrix`` is a ``scipy.sparse.csr_matrix`` of shape (n_users, n_items),
  binary (1 = the user interacted with the item in training).
* ``train_df`` is a DataFrame with integer columns ``user``, ``item``,
  ``rating``, ``timestamp`` (unix seconds) in the same index space; only
  :class:`RecentPopularity` needs it.
* Scores are "higher = better" and contain *no* masking of already-seen items:
  the evaluator masks training items itself.
* Personalised models give users with an empty training row the popularity
  score vector (item training counts normalised to max 1) instead of a
  degenerate all-zero vector.
* Everything is deterministic given ``seed`` (models without randomness take
  no seed).

The two matrix-factorisation models (:class:`BPR`, :class:`IALS`) also expose
``user_embeddings()`` / ``item_embeddings()`` such that
``score(u) == user_embeddings()[u] @ item_embeddings().T`` (up to float32
rounding), so the evaluator can use FAISS inner-product search instead.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "Random",
    "Popularity",
    "RecentPopularity",
    "ItemKNN",
    "EASE",
    "BPR",
    "IALS",
    "BASELINES",
]

_SECONDS_PER_DAY = 86400.0


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _as_binary_csr(train_matrix) -> sp.csr_matrix:
    """Validate and return a binary float32 CSR copy of ``train_matrix``."""
    if not sp.issparse(train_matrix):
        raise TypeError("train_matrix must be a scipy.sparse matrix")
    X = sp.csr_matrix(train_matrix, dtype=np.float32, copy=True)
    X.sum_duplicates()
    X.eliminate_zeros()
    X.data[:] = 1.0
    X.sort_indices()
    return X


def _item_counts(X: sp.csr_matrix) -> np.ndarray:
    """Number of training users per item (float64)."""
    return np.asarray(X.sum(axis=0), dtype=np.float64).ravel()


def _normalised_popularity(X: sp.csr_matrix) -> np.ndarray:
    """Item counts scaled to [0, 1] (float32); all-zero if the matrix is empty."""
    counts = _item_counts(X)
    top = counts.max() if counts.size else 0.0
    if top > 0:
        counts = counts / top
    return counts.astype(np.float32)


# At most this many cells in one dense block of item rows (64 MB of float64). At 27,000
# items (MovieLens-20M size) a block is ~300 item rows; ML-1M's 3,416 items keep 1,024.
_MAX_BLOCK_CELLS = 8_000_000


def _block_rows(chunk_size: int, n_items: int) -> int:
    """Item rows per dense block: ``chunk_size``, fewer if a block would exceed
    ``_MAX_BLOCK_CELLS`` cells."""
    return max(1, min(int(chunk_size), _MAX_BLOCK_CELLS // max(n_items, 1)))


def _gram_rows(X: sp.csr_matrix, Xt: sp.csr_matrix, start: int, stop: int, col_start: int = 0) -> sp.csr_matrix:
    """Rows ``start:stop``, columns ``col_start:`` of the co-occurrence matrix ``X^T X`` (sparse,
    exact integer counts in float32), from ``Xt = X.T`` in CSR. Computed a block of items at a
    time, the whole ``X^T X`` is never held: at MovieLens-20M size it is 94% dense (~680M
    stored entries, 5.5 GB sparse in float32, 8 GB more as a float64 copy)."""
    cols = X if col_start == 0 else X[:, col_start:]
    return Xt[start:stop] @ cols


def _top_k_per_row(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) positions of the ``k`` largest entries of each row of ``block``, ties
    broken by lower column index: the same set as the first ``k`` of a stable argsort of
    ``-block``, found by a partition (linear time) instead of a full sort of every row."""
    n_rows, n = block.shape
    if k >= n:
        return np.nonzero(np.ones(block.shape, bool))
    neg = -block
    kth = np.take_along_axis(neg, np.argpartition(neg, k - 1, axis=1)[:, k - 1:k], axis=1)
    better = neg < kth                   # strictly above the k-th largest: always kept (< k of them)
    tied = neg == kth
    del neg
    need = k - better.sum(axis=1)        # how many of the tied entries still fit, lowest columns first
    better |= tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= need[:, None])
    return np.nonzero(better)


class _Base:
    """Shared bookkeeping: fitted state, user-index validation, fallback."""

    name: str = ""

    def __init__(self) -> None:
        self.n_users_: int | None = None
        self.n_items_: int | None = None

    # -- helpers for subclasses ------------------------------------------------
    def _setup(self, train_matrix) -> sp.csr_matrix:
        X = _as_binary_csr(train_matrix)
        self.n_users_, self.n_items_ = X.shape
        self._empty_users = np.diff(X.indptr) == 0
        self._pop_fallback = _normalised_popularity(X)
        return X

    def _check_users(self, user_idx) -> np.ndarray:
        if self.n_items_ is None:
            raise RuntimeError(f"{type(self).__name__} must be fit() before score()")
        users = np.asarray(user_idx)
        if users.ndim == 0:
            users = users.reshape(1)
        if users.ndim != 1:
            raise ValueError("user_idx must be a 1-d array of user indices")
        if users.size and not np.issubdtype(users.dtype, np.integer):
            raise TypeError("user_idx must contain integers")
        users = users.astype(np.int64, copy=False)
        if users.size and (users.min() < 0 or users.max() >= self.n_users_):
            raise IndexError(
                f"user index out of range [0, {self.n_users_}) in score()"
            )
        return users

    def with_history(self, history) -> "_Base":
        """This fitted model scoring from another user x item history (e.g. training plus
        validation interactions at test time, no refit): a copy whose user rows, and whose
        empty-row fallback, come from ``history``. Models that read no user rows at score
        time (popularity, factor models' trained user vectors) return themselves."""
        if not hasattr(self, "_X"):
            return self
        other = copy.copy(self)
        other._X = _as_binary_csr(history)
        other._empty_users = np.diff(other._X.indptr) == 0
        return other

    def _apply_fallback(self, users: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Replace rows of users with an empty training row by popularity."""
        cold = self._empty_users[users]
        if cold.any():
            scores[cold] = self._pop_fallback
        return scores

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        params = {k: v for k, v in vars(self).items() if not k.endswith("_") and not k.startswith("_")}
        inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({inner})"


# --------------------------------------------------------------------------- #
# non-personalised baselines
# --------------------------------------------------------------------------- #
class Random(_Base):
    """I.i.d. Uniform[0, 1) scores per (user, item).

    The row for user ``u`` is drawn from ``np.random.default_rng([seed, u])``,
    so it depends only on ``seed``, ``u`` and ``n_items`` -- never on which
    batch the user is scored in or on the training data.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "Random":
        self._setup(train_matrix)
        return self

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        out = np.empty((users.size, self.n_items_), dtype=np.float32)
        for row, u in enumerate(users):
            rng = np.random.default_rng([self.seed, int(u)])
            out[row] = rng.random(self.n_items_, dtype=np.float32)
        return out


class Popularity(_Base):
    """Score of an item = number of training users who interacted with it."""

    name = "popularity"

    def __init__(self):
        super().__init__()

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "Popularity":
        X = self._setup(train_matrix)
        self.item_scores_ = _item_counts(X).astype(np.float32)
        return self

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        return np.broadcast_to(self.item_scores_, (users.size, self.n_items_)).copy()


class RecentPopularity(_Base):
    """Popularity over the last ``window_days`` days of the training period.

    The window is ``[t_max - window_days * 86400, t_max]`` where ``t_max`` is the
    maximum training timestamp. The recent count of an item is the number of
    distinct users who interacted with it inside the window (taken from
    ``train_df``). Ties are broken by all-time popularity: the score is
    ``recent_count + all_time_count / (max_all_time_count + 1)``; the added term
    is < 1, so it never overturns a difference in recent counts. Computed in
    float64 then cast to float32 (exact tie-break resolution holds as long as
    ``max_recent_count * (max_all_time_count + 1) < 2**24``, true for ML-1M).

    ``train_df`` is required.
    """

    name = "recent_popularity"

    def __init__(self, window_days: float = 30.0):
        super().__init__()
        if not window_days > 0:
            raise ValueError("window_days must be > 0")
        self.window_days = float(window_days)

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "RecentPopularity":
        X = self._setup(train_matrix)
        if train_df is None:
            raise ValueError("RecentPopularity needs train_df (with a 'timestamp' column)")
        missing = {"user", "item", "timestamp"} - set(train_df.columns)
        if missing:
            raise ValueError(f"train_df lacks columns {sorted(missing)}")
        all_time = _item_counts(X)
        recent = np.zeros(self.n_items_, dtype=np.float64)
        if len(train_df):
            ts = train_df["timestamp"].to_numpy(dtype=np.float64)
            cutoff = ts.max() - self.window_days * _SECONDS_PER_DAY
            window = train_df.loc[ts >= cutoff, ["user", "item"]].drop_duplicates()
            items = window["item"].to_numpy(dtype=np.int64)
            if items.size and (items.min() < 0 or items.max() >= self.n_items_):
                raise ValueError("train_df item index outside train_matrix columns")
            recent = np.bincount(items, minlength=self.n_items_).astype(np.float64)
            self.cutoff_timestamp_ = cutoff
        self.recent_counts_ = recent
        tie = all_time / (all_time.max() + 1.0) if all_time.size else all_time
        self.item_scores_ = (recent + tie).astype(np.float32)
        return self

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        return np.broadcast_to(self.item_scores_, (users.size, self.n_items_)).copy()


# --------------------------------------------------------------------------- #
# neighbourhood / linear models
# --------------------------------------------------------------------------- #
class ItemKNN(_Base):
    """Item-based k-nearest-neighbours with cosine similarity on the binary matrix.

    ``sim(i, j) = |U_i & U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrink)``, with the
    diagonal (self-similarity) set to 0. For every target item ``j`` only its
    ``k`` most similar items are kept (column ``j`` of the sparse matrix ``S``;
    ties broken by lower item index, zero similarities are dropped), and
    ``score(u) = X_u @ S``. Similarities (and the co-occurrence counts under them) are
    computed in item chunks so the dense block never exceeds ``chunk_size x n_items`` (nor
    8M cells: fewer rows per chunk for a large catalog); the full ``X^T X`` is never held.

    Users with an empty training row get the popularity vector.
    """

    name = "itemknn"

    def __init__(self, k: int = 100, shrink: float = 0.0, chunk_size: int = 1024):
        super().__init__()
        if int(k) < 1:
            raise ValueError("k must be >= 1")
        if shrink < 0:
            raise ValueError("shrink must be >= 0")
        self.k = int(k)
        self.shrink = float(shrink)
        self.chunk_size = int(chunk_size)

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "ItemKNN":
        X = self._setup(train_matrix)
        self._X = X
        n_items = self.n_items_
        Xt = X.T.tocsr()  # item rows: rows j of X^T X are Xt[j] @ X
        norms = np.sqrt(_item_counts(X))
        k = min(self.k, max(n_items - 1, 1))
        chunk = _block_rows(self.chunk_size, n_items)
        rows, cols, vals = [], [], []
        for start in range(0, n_items, chunk):
            stop = min(start + chunk, n_items)
            # block[j - start, i] = sim(j, i) for target items j in the chunk
            block = _gram_rows(X, Xt, start, stop).toarray().astype(np.float64)  # co-occurrence counts
            denom = np.multiply.outer(norms[start:stop], norms)
            denom += self.shrink
            ok = denom > 0
            np.divide(block, denom, out=block, where=ok)
            block[~ok] = 0.0
            del denom, ok
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            # top-k neighbours per target item (ties -> lower index)
            tgt, nbr = _top_k_per_row(block, k)
            top = block[tgt, nbr]
            keep = top > 0
            rows.append(nbr[keep])           # neighbour item i (row of S)
            cols.append(tgt[keep] + start)   # target item j (column of S)
            vals.append(top[keep])
            del block
        rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
        cols = np.concatenate(cols) if cols else np.empty(0, np.int64)
        vals = np.concatenate(vals) if vals else np.empty(0)
        self.similarity_ = sp.csr_matrix(
            (vals.astype(np.float32), (rows, cols)), shape=(n_items, n_items)
        )
        return self

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        scores = (self._X[users] @ self.similarity_).toarray().astype(np.float32, copy=False)
        return self._apply_fallback(users, scores)


class EASE(_Base):
    """EASE^R (Steck, WWW 2019): closed-form item-item linear autoencoder.

    ``G = X^T X + l2 * I``, ``P = G^{-1}`` (float64), ``B_ij = -P_ij / P_jj``,
    ``diag(B) = 0``, ``score(u) = X_u @ B``. Memory is O(n_items^2): one dense float64
    ``n_items x n_items`` matrix at the peak (5.4 GiB at 27,000 items), worked on in place
    (see ``_ease_weights``), and ``B`` in float32 (half that) afterwards.

    Users with an empty training row get the popularity vector.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 30_000):
        super().__init__()
        if not l2 > 0:
            raise ValueError("l2 must be > 0")
        if not (isinstance(max_items, int) and max_items >= 1):
            raise ValueError("max_items must be an integer >= 1")
        self.l2 = float(l2)
        self.max_items = max_items

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "EASE":
        n_items = train_matrix.shape[1]
        if n_items > self.max_items:  # G and its inverse are dense n_items^2 float64 matrices
            raise ValueError(f"EASE on {n_items:,} items needs two dense {n_items:,} x {n_items:,} float64 matrices "
                             f"({2 * 8 * n_items ** 2 / 2 ** 30:.1f} GiB); it refuses above model.params.max_items = "
                             f"{self.max_items:,}: raise it if the memory is there, or leave EASE out (models: in the "
                             f"report file)")
        X = self._setup(train_matrix)
        self._X = X
        self.B_ = _ease_weights(X, self.l2)
        return self

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        scores = np.asarray(self._X[users] @ self.B_, dtype=np.float32)
        return self._apply_fallback(users, scores)


def _ease_weights(X: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE's ``B`` (float32) in the memory of one dense float64 ``n x n`` matrix.

    The naive ``inv((X^T X).toarray().astype(float64) + l2 I)`` holds the float32 and the
    float64 co-occurrence matrices, the inverse, ``P / diag`` and its float32 copy: about
    3.5 float64 ``n x n`` matrices (~18 GiB at 27,000 items). Here one float64 buffer
    ``P`` holds, in turn: the upper triangle of ``G = X^T X + l2 I`` (filled by blocks of
    item rows from the sparse product), its Cholesky factor and then its inverse (LAPACK
    ``dpotrf``/``dpotri`` in place; a row-major ``P`` is the column-major ``P.T``, whose
    lower triangle is ``P``'s upper one), the inverse symmetrised by blocks, divided in place
    by ``-diag(P)``, and finally ``B`` in float32 packed into the buffer's first half, the
    rest given back (``ndarray.resize``). The Cholesky inverse (``G`` is symmetric positive
    definite) also takes about half the flops of a general inverse. Same ``B`` as the naive
    formula up to float rounding (~1e-12 relative before the float32 cast); if LAPACK
    refuses (``G`` numerically not positive definite), the naive formula is used.
    """
    from scipy.linalg import lapack

    n = X.shape[1]
    Xt = X.T.tocsr()
    chunk = _block_rows(1024, n)
    P = np.empty((n, n), np.float64)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        P[a:b, a:] = _gram_rows(X, Xt, a, b, col_start=a).toarray()  # upper triangle of X^T X
    del Xt
    P[np.diag_indices(n)] += l2
    F = P.T  # the same memory, column-major
    c, info = lapack.dpotrf(F, lower=1, overwrite_a=1, clean=0)
    inv = None
    if info == 0:
        inv, info = lapack.dpotri(c, lower=1, overwrite_c=1)
    if info != 0 or not np.shares_memory(inv, P):  # pragma: no cover - degenerate G, or a copy was made
        del F, c, inv, P
        return _ease_weights_naive(X, l2)
    del F, c, inv
    for a in range(0, n, chunk):  # symmetrise: the lower triangle from the upper one
        b = min(a + chunk, n)
        P[a:b, :a] = P[:a, a:b].T
        blk = P[a:b, a:b]
        low = np.tril_indices(b - a, -1)
        blk[low] = blk.T[low]
    np.divide(P, -np.diag(P)[None, :], out=P)  # B_ij = -P_ij / P_jj
    P[np.diag_indices(n)] = 0.0
    # float32 B into the first n*n*4 bytes: block rows [a, b) go to bytes [4an, 4bn), before
    # any row not yet converted (rows >= b start at byte 8bn).
    flat32 = P.reshape(-1).view(np.float32)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        flat32[a * n:b * n] = P[a:b].astype(np.float32).ravel()
    del flat32
    try:
        P.resize(((n * n + 1) // 2,), refcheck=False)  # no view of P is left: give the second half back
    except ValueError:  # pragma: no cover - P does not own its memory
        return P.reshape(-1).view(np.float32)[:n * n].reshape(n, n).copy()
    return P.view(np.float32)[:n * n].reshape(n, n)


def _ease_weights_naive(X: sp.csr_matrix, l2: float) -> np.ndarray:
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += l2
    P = np.linalg.inv(G)
    B = P / (-np.diag(P))[None, :]
    B[np.diag_indices_from(B)] = 0.0
    return B.astype(np.float32)


# --------------------------------------------------------------------------- #
# matrix factorisation (implicit, CPU, single thread)
# --------------------------------------------------------------------------- #
def _blas_single_thread():
    """Context manager limiting BLAS to one thread (no-op if threadpoolctl missing)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, "blas")


class _FactorModel(_Base):
    """Shared embedding logic for implicit-based factor models.

    Embeddings carry one extra column to fold the cold-user popularity fallback
    into the inner product: ``item_emb = [item_factors, pop]`` and
    ``user_emb = [user_factors, 0]`` for users with training items,
    ``[0, ..., 0, 1]`` for users with an empty training row. Hence
    ``score(u) == user_embeddings()[u] @ item_embeddings().T`` for all users.
    """

    def _store_embeddings(self, user_factors: np.ndarray, item_factors: np.ndarray) -> None:
        uf = np.asarray(user_factors, dtype=np.float32)
        itf = np.asarray(item_factors, dtype=np.float32)
        cold = self._empty_users
        user_emb = np.zeros((uf.shape[0], uf.shape[1] + 1), dtype=np.float32)
        user_emb[:, :-1] = uf
        user_emb[cold] = 0.0
        user_emb[cold, -1] = 1.0
        item_emb = np.empty((itf.shape[0], itf.shape[1] + 1), dtype=np.float32)
        item_emb[:, :-1] = itf
        item_emb[:, -1] = self._pop_fallback
        self._user_emb = np.ascontiguousarray(user_emb)
        self._item_emb = np.ascontiguousarray(item_emb)

    def user_embeddings(self) -> np.ndarray:
        """(n_users, d) float32 user vectors; score = inner product with items."""
        if self.n_items_ is None:
            raise RuntimeError("fit() first")
        return self._user_emb

    def item_embeddings(self) -> np.ndarray:
        """(n_items, d) float32 item vectors; score = inner product with users."""
        if self.n_items_ is None:
            raise RuntimeError("fit() first")
        return self._item_emb

    def score(self, user_idx) -> np.ndarray:
        users = self._check_users(user_idx)
        return (self._user_emb[users] @ self._item_emb.T).astype(np.float32, copy=False)


class BPR(_FactorModel):
    """Bayesian Personalised Ranking via ``implicit.cpu.bpr`` (CPU, 1 thread).

    implicit 0.7 quirk: the fitted factors have ``factors + 1`` columns --
    ``user_factors[:, -1] == 1`` and ``item_factors[:, -1]`` is a learned item
    bias -- and implicit itself scores with ``user_factors @ item_factors.T``.
    We keep that bias column as-is, so our score equals implicit's score for
    every user with training items (see :class:`_FactorModel` for the extra
    cold-user column). BPR ignores matrix values (binary signal).
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
    ):
        super().__init__()
        self.factors = int(factors)
        self.learning_rate = float(learning_rate)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.seed = int(seed)

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "BPR":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        X = self._setup(train_matrix)
        with warnings.catch_warnings(), _blas_single_thread():
            warnings.filterwarnings("ignore", message=".*OpenBLAS.*")
            warnings.filterwarnings("ignore", message=".*threadpool.*")
            model = BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                iterations=self.iterations,
                num_threads=1,
                random_state=self.seed,
            )
            model.fit(X, show_progress=False)
        self.model_ = model
        self._store_embeddings(model.user_factors, model.item_factors)
        return self


class IALS(_FactorModel):
    """Implicit ALS (Hu, Koren & Volinsky 2008) via ``implicit.cpu.als`` (CPU, 1 thread).

    Confidence is ``c_ui = 1 + alpha * x_ui`` with preference ``p_ui = 1[x_ui > 0]``.

    implicit 0.7 quirk: its solver uses the matrix value itself as the
    confidence of an observed entry (``c_ui = implicit_alpha * value``, with
    ``c = 1`` for unobserved entries) -- it does *not* add 1, and it multiplies
    by its own ``alpha`` internally (verified numerically against a direct
    least-squares solve). We therefore pass the matrix ``(1 + alpha) * X`` and
    set implicit's ``alpha=1.0``, which yields exactly ``c_ui = 1 + alpha``
    on observed (binary) entries. ALS factors have no bias column.
    """

    name = "ials"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
    ):
        super().__init__()
        if alpha < 0:
            raise ValueError("alpha must be >= 0")
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        self.seed = int(seed)

    def fit(self, train_matrix, train_df: pd.DataFrame | None = None) -> "IALS":
        from implicit.cpu.als import AlternatingLeastSquares

        X = self._setup(train_matrix)
        confidence = X.copy()
        confidence.data[:] = np.float32(1.0 + self.alpha)
        with warnings.catch_warnings(), _blas_single_thread():
            warnings.filterwarnings("ignore", message=".*OpenBLAS.*")
            warnings.filterwarnings("ignore", message=".*threadpool.*")
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                iterations=self.iterations,
                num_threads=1,
                random_state=self.seed,
            )
            model.fit(confidence, show_progress=False)
        self.model_ = model
        self._store_embeddings(model.user_factors, model.item_factors)
        return self


BASELINES: dict[str, type] = {
    cls.name: cls
    for cls in (Random, Popularity, RecentPopularity, ItemKNN, EASE, BPR, IALS)
}
