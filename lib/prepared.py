"""From raw ratings to the evaluation protocol: k-core filter, global time split, dense
indices, features. Saved as one ``.npz`` + ``meta.json`` so later steps load it in
milliseconds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .movielens import RawData


def k_core(ratings: pd.DataFrame, min_count: int) -> pd.DataFrame:
    """Drop users and items with fewer than ``min_count`` ratings, repeated until stable."""
    df = ratings
    while True:
        u = df["user_id"].map(df["user_id"].value_counts())
        i = df["item_id"].map(df["item_id"].value_counts())
        keep = (u >= min_count) & (i >= min_count)
        if keep.all():
            return df
        df = df[keep]


def time_split(n: int, fractions) -> tuple[slice, slice, slice]:
    """Positions of a global time-sorted table: train [0, a), val [a, b), test [b, n)."""
    f_train, f_val, _ = fractions
    a = int(n * f_train)
    b = int(n * (f_train + f_val))
    return slice(0, a), slice(a, b), slice(b, n)


@dataclass
class PreparedData:
    name: str
    n_users: int
    n_items: int
    train: pd.DataFrame  # user, item, rating, timestamp (dense indices)
    val: pd.DataFrame
    test: pd.DataFrame
    user_gender: np.ndarray      # (n_users,)
    user_age: np.ndarray         # (n_users,) age group index
    user_occupation: np.ndarray  # (n_users,)
    item_genres: np.ndarray      # (n_items, n_genres) float32 multi-hot
    item_year: np.ndarray        # (n_items,) float32, NaN unknown
    item_titles: list[str]
    genre_names: list[str]
    user_ids: np.ndarray         # dense index -> original id
    item_ids: np.ndarray
    meta: dict = field(default_factory=dict)

    def matrix(self, split: str = "train", min_rating: int = 0) -> sp.csr_matrix:
        """Binary (n_users x n_items) CSR of a split's ratings >= ``min_rating``."""
        df = getattr(self, split)
        df = df[df["rating"] >= min_rating]
        m = sp.csr_matrix((np.ones(len(df), np.float32), (df["user"].to_numpy(), df["item"].to_numpy())),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{c}": getattr(self, s)[c].to_numpy() for s in ("train", "val", "test")
                  for c in ("user", "item", "rating", "timestamp")}
        arrays.update(user_gender=self.user_gender, user_age=self.user_age,
                      user_occupation=self.user_occupation, item_genres=self.item_genres,
                      item_year=self.item_year, user_ids=self.user_ids, item_ids=self.item_ids)
        tmp = folder / "prepared.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(folder / "prepared.npz")
        meta = dict(self.meta, name=self.name, n_users=self.n_users, n_items=self.n_items,
                    item_titles=self.item_titles, genre_names=self.genre_names)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "PreparedData":
        meta = json.loads((folder / "meta.json").read_text())
        z = np.load(folder / "prepared.npz")
        frames = {s: pd.DataFrame({c: z[f"{s}_{c}"] for c in ("user", "item", "rating", "timestamp")})
                  for s in ("train", "val", "test")}
        return cls(name=meta.pop("name"), n_users=meta.pop("n_users"), n_items=meta.pop("n_items"),
                   item_titles=meta.pop("item_titles"), genre_names=meta.pop("genre_names"),
                   user_gender=z["user_gender"], user_age=z["user_age"],
                   user_occupation=z["user_occupation"], item_genres=z["item_genres"],
                   item_year=z["item_year"], user_ids=z["user_ids"], item_ids=z["item_ids"],
                   meta=meta, **frames)


def prepare(raw: RawData, min_count: int = 5, fractions=(0.8, 0.1, 0.1)) -> PreparedData:
    """The reference protocol: k-core (repeated), global stable sort by timestamp, 80/10/10."""
    df = k_core(raw.ratings, min_count)
    user_ids = np.sort(df["user_id"].unique())
    item_ids = np.sort(df["item_id"].unique())
    df = df.assign(user=np.searchsorted(user_ids, df["user_id"].to_numpy()),
                   item=np.searchsorted(item_ids, df["item_id"].to_numpy()))
    # Stable sort: ratings with equal timestamps keep file order, so the split is reproducible.
    df = df.sort_values("timestamp", kind="stable")[["user", "item", "rating", "timestamp"]]
    df = df.reset_index(drop=True).astype(np.int64)
    s_train, s_val, s_test = time_split(len(df), fractions)

    users = raw.users.set_index("user_id").reindex(user_ids)
    items = raw.items.set_index("item_id").reindex(item_ids)
    if users.isna().any().any() or items["title"].isna().any():
        raise ValueError("ratings reference users or items missing from the side files")
    genres = np.zeros((len(item_ids), len(raw.genre_names)), np.float32)
    for row, gs in enumerate(items["genres"]):
        genres[row, gs] = 1.0

    train, val, test = df.iloc[s_train], df.iloc[s_val], df.iloc[s_test]

    def period(part):
        lo, hi = part["timestamp"].min(), part["timestamp"].max()
        fmt = lambda t: pd.Timestamp(int(t), unit="s").strftime("%Y-%m-%d")  # noqa: E731
        return [fmt(lo), fmt(hi)] if len(part) else [None, None]

    meta = {
        "raw_ratings": int(len(raw.ratings)), "raw_users": int(raw.ratings["user_id"].nunique()),
        "raw_items": int(raw.ratings["item_id"].nunique()), "ratings": int(len(df)),
        "min_count": min_count, "fractions": list(fractions),
        "splits": {name: {"ratings": int(len(part)), "users": int(part["user"].nunique()),
                          "items": int(part["item"].nunique()), "period": period(part)}
                   for name, part in (("train", train), ("val", val), ("test", test))},
        "checksums": raw.checksums,
    }
    return PreparedData(
        name=raw.name, n_users=len(user_ids), n_items=len(item_ids),
        train=train.reset_index(drop=True), val=val.reset_index(drop=True), test=test.reset_index(drop=True),
        user_gender=users["gender"].to_numpy(np.int64), user_age=users["age_group"].to_numpy(np.int64),
        user_occupation=users["occupation"].to_numpy(np.int64), item_genres=genres,
        item_year=items["year"].to_numpy(np.float32), item_titles=list(items["title"]),
        genre_names=list(raw.genre_names), user_ids=user_ids, item_ids=item_ids, meta=meta)
