"""Loading, verification and the evaluation protocol (split) on real and generated data."""
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from lib.movielens import data as movielens
from lib.movielens import data as prepared
from lib.movielens.data import DataError


def test_ml1m_reference_split_counts(shared_data):
    """The reference protocol on the real data gives exactly the reference's figures."""
    data = prepared.prepare(movielens.load("ml-1m", str(shared_data / "ml-1m")))
    assert data.meta["ratings"] == 999_611
    assert (data.n_users, data.n_items) == (6_040, 3_416)
    assert [len(data.train), len(data.val), len(data.test)] == [799_688, 99_961, 99_962]
    assert data.meta["splits"]["train"]["period"] == ["2000-04-25", "2000-12-02"]
    assert data.meta["splits"]["test"]["period"][1] == "2003-02-28"
    _assert_no_leakage(data)


def test_ml100k_loads_and_splits(shared_data):
    raw = movielens.load("ml-100k", str(shared_data / "ml-100k"))
    assert len(raw.ratings) == 100_000 and raw.users["age_group"].between(0, 6).all()
    data = prepared.prepare(raw)
    assert data.n_users <= 943 and len(data.train) + len(data.val) + len(data.test) == data.meta["ratings"]
    _assert_no_leakage(data)


def _assert_no_leakage(data):
    """No validation or test interaction is earlier than any training one, and no
    (user, item) pair is in two splits."""
    assert data.train["timestamp"].max() <= data.val["timestamp"].min()
    assert data.val["timestamp"].max() <= data.test["timestamp"].min()
    keys = [set(zip(p["user"], p["item"])) for p in (data.train, data.val, data.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_corrupt_file_is_named(tmp_path, shared_data):
    for name in ("movies.dat", "users.dat", "ratings.dat"):
        shutil.copy(shared_data / "ml-1m" / name, tmp_path / name)
    with open(tmp_path / "ratings.dat", "r+b") as fh:  # flip one rating
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(b"9" if byte != b"9" else b"8")
    with pytest.raises(DataError, match="ratings.dat"):
        movielens.load("ml-1m", str(tmp_path))


def test_missing_file_is_named(tmp_path, shared_data):
    shutil.copy(shared_data / "ml-1m" / "ratings.dat", tmp_path / "ratings.dat")
    with pytest.raises(DataError, match="users.dat"):
        movielens.load("ml-1m", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        movielens.load("ml-1m", str(tmp_path / "nowhere"))


def test_loads_from_zip(tmp_path, shared_data):
    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for name in ("u.data", "u.item", "u.user"):
            zf.write(shared_data / "ml-100k" / name, f"ml-100k/{name}")
    assert len(movielens.load("ml-100k", str(z)).ratings) == 100_000


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(movielens.DATA_ROOT_ENV, str(tmp_path))
    with pytest.raises(DataError, match="no 'ml-1m' folder"):
        movielens.resolve_source("ml-1m", None)


def test_kcore_is_stable(synthetic_data):
    tr = synthetic_data
    allr = np.concatenate([tr.train["user"], tr.val["user"], tr.test["user"]])
    alli = np.concatenate([tr.train["item"], tr.val["item"], tr.test["item"]])
    assert np.bincount(allr).min() >= 5 and np.bincount(alli).min() >= 5


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 10_000), a=st.floats(0.05, 0.9), b=st.floats(0.05, 0.9))
def test_time_split_partitions(n, a, b):
    if a + b >= 0.99:
        return
    tr, va, te = prepared.time_split(n, (a, b, 1 - a - b))
    assert tr.start == 0 and tr.stop == va.start and va.stop == te.start and te.stop == n


def test_synthetic_roundtrip(tmp_path, synthetic_data):
    synthetic_data.save(tmp_path)
    back = prepared.PreparedData.load(tmp_path)
    assert back.n_items == synthetic_data.n_items
    assert back.train.equals(synthetic_data.train)
    for side in ("user_features", "item_features"):
        for got, want in zip(getattr(back, side), getattr(synthetic_data, side), strict=True):
            assert (got.name, got.spec, got.vocabulary) == (want.name, want.spec, want.vocabulary)
            for a, b in ((got.codes, want.codes), (got.values, want.values)):
                np.testing.assert_array_equal(a, b)
            if want.tokens is not None:
                assert (got.tokens != want.tokens).nnz == 0
    assert back.item_labels == synthetic_data.item_labels


def _toy_raw(n_users=30, n_items=12, per_user=9, seed=0):
    """Every user rates ``per_user`` distinct items at increasing times."""
    rng = np.random.default_rng(seed)
    rows = [(u, int(i), 5, 1_000_000 + u * 10 + k * 100_000 + int(rng.integers(0, 5)))
            for u in range(n_users) for k, i in enumerate(rng.choice(n_items, per_user, replace=False))]
    ratings = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    return movielens.RawData("toy", ratings, None, None, {}, {}, {})


def test_leave_last_n_is_per_user():
    raw = _toy_raw()
    data = prepared.prepare(raw, min_count=1, leave_last=2)
    assert data.meta["protocol"].startswith("per-user temporal leave-last-2")
    for split, n in (("train", 5), ("val", 2), ("test", 2)):
        assert (getattr(data, split).groupby("user").size() == n).all()
    # each user's test interactions are their latest, validation the two before
    for u, part in data.test.groupby("user"):
        assert part["timestamp"].min() > data.val[data.val["user"] == u]["timestamp"].max()
        assert data.val[data.val["user"] == u]["timestamp"].min() > data.train[data.train["user"] == u]["timestamp"].max()


def test_users_with_too_few_interactions_stay_in_training_under_leave_last():
    raw = _toy_raw(per_user=4)  # 4 <= 2 * 2: nobody can give two to test and two to validation
    with pytest.raises(DataError, match="data.leave_last: 2 .* leaves \\['val', 'test'\\] empty"):
        prepared.prepare(raw, min_count=1, leave_last=2)


def test_split_by_dates():
    raw = _toy_raw()
    data = prepared.prepare(raw, min_count=1, split_dates=["1970-01-20", "1970-01-21"])
    # 1970-01-20 is 1,641,600 s, 1970-01-21 1,728,000 s; interaction k of a user sits at
    # 1e6 + k * 1e5 (+ < 300 s): k <= 6 train, k = 7 val, k = 8 test
    assert [len(data.train), len(data.val), len(data.test)] == [30 * 7, 30, 30]
    assert data.meta["protocol"] == "global temporal split by date (validation from 1970-01-20, test from 1970-01-21)"


def test_a_log_without_ratings_counts_every_interaction_as_positive():
    raw = _toy_raw()
    raw.ratings["rating"] = 1.0
    raw.has_rating = False
    data = prepared.prepare(raw, min_count=1)
    assert data.matrix("test", min_rating=4).nnz == len(data.test)


def test_a_repeat_of_a_training_pair_is_not_a_test_positive():
    """With data.duplicates: all a pair can be in training and in test; it is never ranked
    (seen), so counting it as relevant would cap recall below 1 for every model."""
    from lib.movielens import evaluate
    raw = _toy_raw()
    first = raw.ratings.sort_values("timestamp").groupby("user_id").head(1)  # each user's first item ...
    again = first.assign(timestamp=first["timestamp"] + 10_000_000)        # ... again, after everything
    raw.ratings = pd.concat([raw.ratings, again], ignore_index=True)
    data = prepared.prepare(raw, min_count=1, leave_last=1)
    truth, users = evaluate.ground_truth(data, {"data": {"test_min_rating": 1}}, "test")
    assert len(data.test) == 30 and truth.nnz == 0 and len(users) == 0
    val_truth, _ = evaluate.ground_truth(data, {"data": {"test_min_rating": 1}}, "val")
    assert val_truth.nnz == 30  # the items before them are new
