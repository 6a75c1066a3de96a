"""Loading, verification and the evaluation protocol (split) on real and generated data."""
import shutil
import zipfile

import numpy as np
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
    np.testing.assert_array_equal(back.item_genres, synthetic_data.item_genres)
