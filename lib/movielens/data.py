"""The study's data: MovieLens or a user's interaction log, and the evaluation protocol.

Loading: MovieLens from a directory laid out like the extracted official archive, the
official zip (downloaded with its checksum verified), or small generated data in the same
format for tests and smoke runs; or (``data.dataset: interactions``) a user's log and
feature tables, read by ``lib.movielens.interactions``. Both become one ``RawData``:
interactions plus feature tables described by the schema of ``lib.movielens.features``
(MovieLens is one configuration of it, ``movielens_schema``). Protocol: k-core filter, a
time split (global by fractions, the reference, or by dates; or per-user leave-last-N),
dense indices, encoded features, saved as one ``.npz`` + ``meta.json`` so later steps load
it in milliseconds.

Every file read from a real dataset is checked against the official sha256 (the values
pinned in PROVENANCE.md); a missing or corrupt file raises ``DataError`` naming it.
The MovieLens licence forbids redistribution, so nothing here writes the data into git.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core.files import DataError, atomic_folder, file_lock
from . import interactions
from .features import Feature, encode, normalise_schema


ML1M_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
               "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ML1M_AGES = [1, 18, 25, 35, 45, 50, 56]

# name -> (sha256, rows); rows None = not a table
OFFICIAL_FILES = {
    "ml-1m": {
        "ratings.dat": ("506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f", 1_000_209),
        "movies.dat": ("0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9", 3_883),
        "users.dat": ("1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3", 6_040),
    },
    "ml-100k": {
        "u.data": ("06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490", 100_000),
        "u.item": ("553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701", 1_682),
        "u.user": ("f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c", 943),
    },
}
OFFICIAL_ARCHIVES = {
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
              "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip", None),
}
DATA_ROOT_ENV = "TWOTOWER_DATA_ROOT"


@dataclass
class RawData:
    """Interactions plus side information, ids as in the files (any type)."""
    name: str
    ratings: pd.DataFrame  # user_id, item_id, rating, timestamp (epoch seconds), in file order
    users: pd.DataFrame | None   # indexed by user id, one column per user feature (raw values)
    items: pd.DataFrame | None   # indexed by item id, one column per item feature (raw values)
    user_schema: dict[str, dict]  # feature name -> spec (lib.movielens.features.normalise_spec)
    item_schema: dict[str, dict]
    checksums: dict[str, str]    # file -> sha256 of what was read
    item_labels: pd.Series | None = None  # item id -> what views show (MovieLens: titles)
    has_rating: bool = True      # False: a log without ratings, every interaction a positive
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows the loader dropped


# MovieLens as one configuration of the feature schema: its loaders map the users and
# movies files onto these columns. ``fit_on: catalog`` and ``missing: mean`` for the year
# keep the reference's encoding (standardised over the catalog; one unknown year in
# ML-100K set to the mean, no flag); the genre vocabulary is the official list, in order.
def movielens_schema(genre_names: list[str]) -> tuple[dict, dict]:
    user = {name: {"type": "categorical", "column": None, "vocabulary": None}
            for name in ("gender", "age_group", "occupation")}
    item = {"genres": {"type": "multi_categorical", "column": None, "sep": "|", "vocabulary": list(genre_names)},
            "year": {"type": "numeric", "column": None, "fit_on": "catalog", "missing": "mean"}}
    return user, item


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_member(source: Path, name: str) -> bytes:
    if source.is_dir():
        path = source / name
        if not path.is_file():
            raise DataError(f"missing data file: {path}")
        return path.read_bytes()
    try:
        with zipfile.ZipFile(source) as zf:
            candidates = [n for n in zf.namelist() if n.endswith("/" + name) or n == name]
            if not candidates:
                raise DataError(f"missing data file: {name} inside {source}")
            return zf.read(candidates[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{source}: not a readable zip archive ({exc}); data.path must be the official "
                        f"archive or a folder laid out like it") from exc


@contextlib.contextmanager
def _parsing(source: Path, name: str):
    """A file that passed (or skipped) its checksum but is not in the expected format is a
    DataError naming it (with checksums off, a user's own copy can be anything)."""
    try:
        yield
    except DataError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError,
            pd.errors.ParserError) as exc:
        where = source / name if source.is_dir() else f"{name} inside {source}"
        raise DataError(f"{where}: not in the expected format ({type(exc).__name__}: {exc})") from exc


def _verified(source: Path, dataset: str, name: str, verify: bool) -> tuple[bytes, str]:
    data = _read_member(source, name)
    digest = sha256_bytes(data)
    if verify:
        expected, _rows = OFFICIAL_FILES[dataset][name]
        if digest != expected:
            raise DataError(
                f"corrupt or unexpected data file: {source / name if source.is_dir() else name} "
                f"(sha256 {digest[:16]}..., expected {expected[:16]}... for the official "
                f"{dataset} file). Re-download the official archive or fix data.path.")
    return data, digest


def _check_rows(df: pd.DataFrame, dataset: str, name: str, verify: bool) -> None:
    if verify:
        rows = OFFICIAL_FILES[dataset][name][1]
        if len(df) != rows:
            raise DataError(f"{name}: read {len(df)} rows, expected {rows}")


def _year_from_title(titles: pd.Series) -> pd.Series:
    return titles.str.extract(r"\((\d{4})\)\s*$")[0].astype(float)


def parse_ml1m(source: Path, verify: bool = True) -> RawData:
    sums = {}
    with _parsing(source, "ratings.dat"):
        raw, sums["ratings.dat"] = _verified(source, "ml-1m", "ratings.dat", verify)
        arr = np.loadtxt(io.BytesIO(raw.replace(b"::", b"\t")), dtype=np.int64, delimiter="\t", ndmin=2)
        if arr.shape[1] != 4:
            raise DataError(f"ratings.dat: expected 4 columns, got {arr.shape[1]}")
        ratings = pd.DataFrame(arr, columns=["user_id", "item_id", "rating", "timestamp"])
        _check_rows(ratings, "ml-1m", "ratings.dat", verify)

    with _parsing(source, "users.dat"):
        raw, sums["users.dat"] = _verified(source, "ml-1m", "users.dat", verify)
        users = pd.read_csv(io.BytesIO(raw), sep="::", engine="python", header=None,
                            names=["user_id", "gender", "age", "occupation", "zip"], encoding="latin-1")
        _check_rows(users, "ml-1m", "users.dat", verify)
        users["gender"] = (users["gender"] == "F").astype(np.int64)
        age_index = {a: i for i, a in enumerate(ML1M_AGES)}
        if not users["age"].isin(age_index).all():
            raise DataError("users.dat: unknown age code")
        users["age_group"] = users["age"].map(age_index).astype(np.int64)

    with _parsing(source, "movies.dat"):
        raw, sums["movies.dat"] = _verified(source, "ml-1m", "movies.dat", verify)
        items = pd.read_csv(io.BytesIO(raw), sep="::", engine="python", header=None,
                            names=["item_id", "title", "genres"], encoding="latin-1")
        _check_rows(items, "ml-1m", "movies.dat", verify)
        known = set(ML1M_GENRES)
        items["genres"] = items["genres"].str.split("|").map(lambda gs: [g for g in gs if g in known])
        items["year"] = _year_from_title(items["title"])
    return _movielens_raw("ml-1m", ratings, users, items, ML1M_GENRES, sums)


def _movielens_raw(name, ratings, users, items, genre_names, sums) -> RawData:
    user_schema, item_schema = movielens_schema(genre_names)
    items = items.set_index("item_id")
    return RawData(name, ratings, users.set_index("user_id")[list(user_schema)], items[list(item_schema)],
                   user_schema, item_schema, sums, item_labels=items["title"].astype(str))


ML100K_GENRES = ["unknown"] + ML1M_GENRES


def parse_ml100k(source: Path, verify: bool = True) -> RawData:
    sums = {}
    with _parsing(source, "u.data"):
        raw, sums["u.data"] = _verified(source, "ml-100k", "u.data", verify)
        arr = np.loadtxt(io.BytesIO(raw), dtype=np.int64, ndmin=2)
        ratings = pd.DataFrame(arr, columns=["user_id", "item_id", "rating", "timestamp"])
        _check_rows(ratings, "ml-100k", "u.data", verify)

    with _parsing(source, "u.user"):
        raw, sums["u.user"] = _verified(source, "ml-100k", "u.user", verify)
        users = pd.read_csv(io.BytesIO(raw), sep="|", header=None,
                            names=["user_id", "age", "gender", "occupation", "zip"], encoding="latin-1")
        _check_rows(users, "ml-100k", "u.user", verify)
        users["gender"] = (users["gender"] == "F").astype(np.int64)
        # Same age groups as ML-1M (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+).
        users["age_group"] = np.searchsorted(np.array(ML1M_AGES[1:]), users["age"].to_numpy(), side="right")
        users["occupation"] = pd.Categorical(users["occupation"]).codes.astype(np.int64)

    with _parsing(source, "u.item"):
        raw, sums["u.item"] = _verified(source, "ml-100k", "u.item", verify)
        items = pd.read_csv(io.BytesIO(raw), sep="|", header=None, encoding="latin-1")
        _check_rows(items, "ml-100k", "u.item", verify)
        flags = items.iloc[:, 5:24].to_numpy()
        items = pd.DataFrame({
            "item_id": items[0].astype(np.int64),
            "title": items[1].astype(str),
            "year": pd.to_datetime(items[2], format="%d-%b-%Y", errors="coerce").dt.year.astype(float),
            "genres": [[ML100K_GENRES[g] for g in np.flatnonzero(row)] for row in flags],
        })
    return _movielens_raw("ml-100k", ratings, users, items, ML100K_GENRES, sums)


PARSERS = {"ml-1m": parse_ml1m, "ml-100k": parse_ml100k}


def download_archive(dataset: str, dest_dir: Path) -> Path:
    """Download the official zip into ``dest_dir`` and verify its sha256 (if pinned)."""
    url, sha = OFFICIAL_ARCHIVES[dataset]
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{dataset}.zip"
    if target.is_file() and (sha is None or sha256_bytes(target.read_bytes()) == sha):
        return target
    print(f"downloading {url} ...")
    fd, tmp = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        got = sha256_bytes(Path(tmp).read_bytes())
        if sha is not None and got != sha:
            raise DataError(f"downloaded {url} has sha256 {got}, expected {sha}")
        os.replace(tmp, target)
    except OSError as exc:
        raise DataError(f"could not download {url} ({exc}); set data.path or "
                        f"${DATA_ROOT_ENV} to a local copy") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


DOWNLOAD_DIR = Path(__file__).resolve().parents[2] / "data" / "raw"  # <repository>/data/raw, git-ignored


def resolve_source(dataset: str, path: str | None, download_dir: str | Path = DOWNLOAD_DIR) -> Path:
    """Where to read ``dataset`` from: ``path`` (dir or zip) > $TWOTOWER_DATA_ROOT/<dataset>
    > a previously downloaded archive > download the official archive."""
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise DataError(f"data.path does not exist: {p}")
        return p
    root = os.environ.get(DATA_ROOT_ENV)
    if root:
        p = Path(root).expanduser() / dataset
        if not p.exists():
            raise DataError(f"${DATA_ROOT_ENV}={root} has no '{dataset}' folder ({p})")
        return p
    return download_archive(dataset, Path(download_dir))


def source_fingerprint(dataset: str, path: str | None) -> dict:
    """Size and modification time of every file a dataset would be read from, without
    downloading anything: with checksums off, a file replaced at the same path changes
    the prepared-data key (with checksums on, the official sha256 pins the content)."""
    if path:
        src = Path(path).expanduser()
    elif os.environ.get(DATA_ROOT_ENV):
        src = Path(os.environ[DATA_ROOT_ENV]).expanduser() / dataset
    else:
        src = DOWNLOAD_DIR / f"{dataset}.zip"
    files = sorted(src.rglob("*")) if src.is_dir() else [src]
    return {str(f): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}


def load(dataset: str, path: str | None = None, verify: bool = True) -> RawData:
    if dataset not in PARSERS:
        raise DataError(f"unknown dataset '{dataset}'; known: {sorted(PARSERS)} or 'synthetic'")
    return PARSERS[dataset](resolve_source(dataset, path), verify=verify)


def write_synthetic_ml1m(dest: Path, n_users: int = 300, n_items: int = 200,
                         n_ratings: int = 12_000, seed: int = 0) -> Path:
    """Write a small generated dataset in the ML-1M file format, with planted structure
    (users prefer items of their taste cluster; popularity follows a power law; a slow
    drift in time), so that models can learn and smoke runs are meaningful."""
    rng = np.random.default_rng(seed)
    dest.mkdir(parents=True, exist_ok=True)
    n_clusters = 6
    user_cluster = rng.integers(0, n_clusters, n_users)
    item_cluster = rng.integers(0, n_clusters, n_items)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rng.shuffle(pop)
    rows = set()
    out = []
    t0 = 956_703_932
    while len(out) < n_ratings:
        u = int(rng.integers(0, n_users))
        same = rng.random() < 0.7
        cand = np.flatnonzero(item_cluster == user_cluster[u]) if same else np.arange(n_items)
        p = pop[cand] / pop[cand].sum()
        i = int(rng.choice(cand, p=p))
        if (u, i) in rows:
            continue
        rows.add((u, i))
        rating = int(np.clip(round(3.6 + (0.8 if same else -0.6) + rng.normal(0, 1)), 1, 5))
        ts = t0 + int(len(out) * 2_000 + rng.integers(0, 1_000))
        out.append(f"{u + 1}::{i + 1}::{rating}::{ts}")
    (dest / "ratings.dat").write_text("\n".join(out) + "\n")
    users = [f"{u + 1}::{'F' if rng.random() < 0.3 else 'M'}::{ML1M_AGES[user_cluster[u] % 7]}::"
             f"{int(user_cluster[u] * 3 + rng.integers(0, 3))}::00000" for u in range(n_users)]
    (dest / "users.dat").write_text("\n".join(users) + "\n")
    movies = []
    for i in range(n_items):
        gs = {ML1M_GENRES[(item_cluster[i] * 3) % 18], ML1M_GENRES[int(rng.integers(0, 18))]}
        movies.append(f"{i + 1}::Movie {i + 1} ({1950 + int(rng.integers(0, 50))})::{'|'.join(sorted(gs))}")
    (dest / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return dest


# -- the evaluation protocol ------------------------------------------------------------------

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


def date_seconds(date: str) -> int:
    """An ISO date or datetime (naive = UTC) as epoch seconds."""
    ts = pd.Timestamp(date)
    return int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).timestamp())


def split_masks(df: pd.DataFrame, fractions=(0.8, 0.1, 0.1), split_dates=None,
                leave_last: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test row masks of a table sorted stably by timestamp. The reference: a
    global time split by ``fractions`` of the rows; ``split_dates`` ``[val_start,
    test_start]``: a global split at two cut-off dates; ``leave_last`` N: per user, the
    last N interactions to test and the N before to validation (users with at most 2N
    stay in training): a per-user protocol, not comparable with global-split figures."""
    n = len(df)
    split = np.zeros(n, np.int8)  # 0 train, 1 val, 2 test
    if leave_last:
        from_end = df.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
        counts = df.groupby("user", sort=False)["user"].transform("size").to_numpy()
        eligible = counts > 2 * leave_last
        split[eligible & (from_end < 2 * leave_last)] = 1
        split[eligible & (from_end < leave_last)] = 2
    elif split_dates:
        ts = df["timestamp"].to_numpy()
        split[ts >= date_seconds(split_dates[0])] = 1
        split[ts >= date_seconds(split_dates[1])] = 2
    else:
        s_train, s_val, s_test = time_split(n, fractions)
        split[s_val] = 1
        split[s_test] = 2
    return split == 0, split == 1, split == 2


def protocol_label(fractions=(0.8, 0.1, 0.1), split_dates=None, leave_last: int | None = None) -> str:
    """The protocol in words, as reports name it in their title block."""
    if leave_last:
        return (f"per-user temporal leave-last-{leave_last} (each user's last {leave_last} interactions "
                f"to test, the {leave_last} before to validation)")
    if split_dates:
        return f"global temporal split by date (validation from {split_dates[0]}, test from {split_dates[1]})"
    return "global temporal split " + "/".join(f"{round(100 * f):g}" for f in fractions)


@dataclass
class PreparedData:
    name: str
    n_users: int
    n_items: int
    train: pd.DataFrame  # user, item, rating, timestamp (dense indices)
    val: pd.DataFrame
    test: pd.DataFrame
    user_features: list[Feature]  # encoded over users 0..n_users-1 (lib.movielens.features)
    item_features: list[Feature]
    item_labels: list[str]       # what views show for an item (MovieLens: its title)
    user_ids: np.ndarray         # dense index -> original id
    item_ids: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def has_rating(self) -> bool:
        return self.meta.get("has_rating", True)

    def rating_threshold(self, min_rating: float) -> float:
        """``min_rating`` as a filter on this data's ratings: none (every interaction a
        positive) for a log without a rating column."""
        return min_rating if self.has_rating else -np.inf

    def through_validation(self) -> "PreparedData":
        """This data with the validation split moved into training, test unchanged: the
        history a model reads at test time under ``evaluate.query_history: train+val``, and
        what ``evaluate.refit`` trains on. Nothing of the test period enters."""
        train = pd.concat([self.train, self.val], ignore_index=True).sort_values("timestamp", kind="stable")
        return dataclasses.replace(self, train=train.reset_index(drop=True), val=self.val.iloc[:0],
                                   meta=dict(self.meta, through_validation=True))

    def item_feature(self, name: str) -> Feature | None:
        return next((f for f in self.item_features if f.name == name), None)

    def matrix(self, split: str = "train", min_rating: float = 0) -> sp.csr_matrix:
        """Binary (n_users x n_items) CSR of a split's ratings >= ``min_rating``."""
        df = getattr(self, split)
        df = df[df["rating"] >= self.rating_threshold(min_rating)]
        m = sp.csr_matrix((np.ones(len(df), np.float32), (df["user"].to_numpy(), df["item"].to_numpy())),
                          shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def save(self, folder: Path) -> None:
        """Write ``prepared.npz`` and ``meta.json`` into ``folder`` (``prepared_data``
        builds the folder under a temporary name, so a cache entry is complete or absent)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{c}": getattr(self, s)[c].to_numpy() for s in ("train", "val", "test")
                  for c in ("user", "item", "rating", "timestamp")}
        for side, feats in (("user", self.user_features), ("item", self.item_features)):
            for f in feats:
                arrays.update(f.to_arrays(f"{side}_feature/"))
        # ids of any type; strings as a fixed-width unicode array (no pickles in the cache)
        arrays.update(user_ids=_plain_ids(self.user_ids), item_ids=_plain_ids(self.item_ids))
        np.savez_compressed(folder / "prepared.npz", **arrays)
        meta = dict(self.meta, name=self.name, n_users=self.n_users, n_items=self.n_items,
                    item_labels=self.item_labels,
                    user_features=[f.describe() for f in self.user_features],
                    item_features=[f.describe() for f in self.item_features])
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))

    @classmethod
    def load(cls, folder: Path) -> "PreparedData":
        meta = json.loads((folder / "meta.json").read_text())
        z = np.load(folder / "prepared.npz")
        frames = {s: pd.DataFrame({c: z[f"{s}_{c}"] for c in ("user", "item", "rating", "timestamp")})
                  for s in ("train", "val", "test")}
        n_users, n_items = meta.pop("n_users"), meta.pop("n_items")
        return cls(name=meta.pop("name"), n_users=n_users, n_items=n_items,
                   item_labels=meta.pop("item_labels"),
                   user_features=[Feature.from_arrays(d, z, "user_feature/", n_users) for d in meta.pop("user_features")],
                   item_features=[Feature.from_arrays(d, z, "item_feature/", n_items) for d in meta.pop("item_features")],
                   user_ids=z["user_ids"], item_ids=z["item_ids"], meta=meta, **frames)


def _plain_ids(ids: np.ndarray) -> np.ndarray:
    return ids if ids.dtype.kind in "iu" else ids.astype(str)


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct ids, dense index of each value)."""
    codes, uniques = pd.factorize(values, sort=True)
    return np.asarray(uniques), codes.astype(np.int64)


def prepare(raw: RawData, min_count: int = 5, fractions=(0.8, 0.1, 0.1), split_dates=None,
            leave_last: int | None = None) -> PreparedData:
    """The protocol: k-core (repeated), stable sort by timestamp, then the split (the
    reference: global 80/10/10 by time; see ``split_masks`` for the others)."""
    df = k_core(raw.ratings, min_count)
    user_ids, users = _dense_ids(df["user_id"].to_numpy())
    item_ids, items = _dense_ids(df["item_id"].to_numpy())
    rating = df["rating"].to_numpy()
    df = pd.DataFrame({"user": users, "item": items,
                       "rating": rating if rating.dtype.kind in "iu" else rating.astype(np.float64),
                       "timestamp": df["timestamp"].to_numpy(np.int64)})
    # Stable sort: ratings with equal timestamps keep file order, so the split is reproducible.
    df = df.sort_values("timestamp", kind="stable").reset_index(drop=True)
    if rating.dtype.kind in "iu":
        df["rating"] = df["rating"].astype(np.int64)
    if df.empty:
        raise DataError(f"no ratings left after the {min_count}-core filter of {raw.name} "
                        f"({len(raw.ratings):,} ratings before): lower data.min_count")
    masks = split_masks(df, fractions, split_dates, leave_last)
    empty = [name for name, mask in zip(("train", "val", "test"), masks) if not mask.any()]
    if empty:
        how = (f"data.leave_last: {leave_last}" if leave_last else f"data.split_dates: {list(split_dates)}"
               if split_dates else f"the split {list(fractions)}")
        raise DataError(f"{how} of {len(df):,} ratings leaves {empty} empty: change it")
    train, val, test = (df[mask] for mask in masks)

    user_features = encode(raw.users, user_ids, raw.user_schema)
    item_features = encode(raw.items, item_ids, raw.item_schema)
    labels = (raw.item_labels.reindex(item_ids).fillna("").astype(str).tolist() if raw.item_labels is not None
              else [str(i) for i in item_ids])

    def period(part):
        lo, hi = part["timestamp"].min(), part["timestamp"].max()
        fmt = lambda t: pd.Timestamp(int(t), unit="s").strftime("%Y-%m-%d")  # noqa: E731
        return [fmt(lo), fmt(hi)] if len(part) else [None, None]

    def coverage(features, n):
        return {f.name: {"type": f.kind, "vocabulary": len(f.vocabulary) if f.vocabulary is not None else None,
                         "missing": f.missing, "rows": n} for f in features}

    meta = {
        "rows_read": int(len(raw.ratings) + sum(raw.dropped.values())),  # before the loader's drops
        "raw_ratings": int(len(raw.ratings)), "raw_users": int(raw.ratings["user_id"].nunique()),
        "raw_items": int(raw.ratings["item_id"].nunique()), "ratings": int(len(df)),
        "min_count": min_count, "fractions": list(fractions),
        "split_dates": list(split_dates) if split_dates else None, "leave_last": leave_last,
        "protocol": protocol_label(fractions, split_dates, leave_last),
        "has_rating": raw.has_rating,
        "dropped": {**raw.dropped, f"users or items below the {min_count}-core": int(len(raw.ratings) - len(df))},
        "splits": {name: {"ratings": int(len(part)), "users": int(part["user"].nunique()),
                          "items": int(part["item"].nunique()), "period": period(part)}
                   for name, part in (("train", train), ("val", val), ("test", test))},
        "features": {"user": coverage(user_features, len(user_ids)), "item": coverage(item_features, len(item_ids))},
        "checksums": raw.checksums,
    }
    return PreparedData(
        name=raw.name, n_users=len(user_ids), n_items=len(item_ids),
        train=train.reset_index(drop=True), val=val.reset_index(drop=True), test=test.reset_index(drop=True),
        user_features=user_features, item_features=item_features, item_labels=labels,
        user_ids=user_ids, item_ids=item_ids, meta=meta)


# -- the prepared-data cache ----------------------------------------------------------------
def build_prepared(d: dict, seed: int, folder: Path) -> PreparedData:
    """Load the dataset a ``data`` params section names (generated data is written into
    ``folder`` first) and apply the protocol."""
    if d["dataset"] == "synthetic":
        src = write_synthetic_ml1m(folder / "synthetic", seed=seed, **d["synthetic"])
        raw = parse_ml1m(src, verify=False)
        raw.name = "synthetic"
    elif d["dataset"] == "interactions":
        raw = load_interactions(d)
    else:
        raw = load(d["dataset"], d["path"], verify=d["verify_checksums"])
    return prepare(raw, d["min_count"], tuple(d["split"]), d["split_dates"], d["leave_last"])


def load_interactions(d: dict) -> RawData:
    """A user's interaction log and optional feature tables (``data.dataset: interactions``),
    read by ``lib.movielens.interactions``."""
    log = interactions.read_interactions(d["path"], d["columns"], d["timestamp_unit"], d["duplicates"])
    tables, schemas, sums = {}, {}, dict(log.checksums)
    for side, id_column in (("user", "user_id"), ("item", "item_id")):
        spec = d[f"{side}_features"]
        schemas[side] = normalise_schema(f"data.{side}_features.columns", (spec or {}).get("columns"))
        tables[side] = None
        if spec:
            columns = {name: dict(f, column=f["column"] or name) for name, f in schemas[side].items()}
            tables[side], digest = interactions.read_feature_table(
                spec["path"], spec["key"], columns, log.frame[id_column].unique())
            sums[str(spec["path"])] = digest
    return RawData(Path(d["path"]).name, log.frame, tables["user"], tables["item"], schemas["user"],
                   schemas["item"], sums, has_rating=log.has_rating, dropped=dict(log.dropped))


def _load_cached(folder: Path) -> PreparedData | None:
    if not folder.is_dir():
        return None
    try:
        return PreparedData.load(folder)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        print(f"prepared data in {folder} is incomplete or corrupt ({type(exc).__name__}): rebuilding", flush=True)
        return None


def prepared_data(d: dict, seed: int, folder: Path) -> PreparedData:
    """The prepared data of a ``data`` section: read from its cache folder, else built
    there. The folder appears complete or not at all (built under a temporary name), and
    parallel runs on the same data build it once (a lock)."""
    data = _load_cached(folder)
    if data is not None:
        return data
    with file_lock(folder):
        data = _load_cached(folder)
        if data is None:
            with atomic_folder(folder) as tmp:
                data = build_prepared(d, seed, tmp)
                data.save(tmp)
        return data
