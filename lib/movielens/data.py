"""MovieLens data: the raw files and the evaluation protocol.

Loading: a directory laid out like the extracted official archive, the official zip
(downloaded with its checksum verified), or small generated data in the same format for
tests and smoke runs. Protocol: k-core filter, global time split, dense indices, features,
saved as one ``.npz`` + ``meta.json`` so later steps load it in milliseconds.

Every file read from a real dataset is checked against the official sha256 (the values
pinned in PROVENANCE.md); a missing or corrupt file raises ``DataError`` naming it.
The MovieLens licence forbids redistribution, so nothing here writes the data into git.
"""
from __future__ import annotations

import contextlib
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

from ..core.files import atomic_folder, file_lock


class DataError(RuntimeError):
    """A data file is missing, corrupt, or not what it claims to be."""


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
    """Ratings plus side information, ids as in the files."""
    name: str
    ratings: pd.DataFrame  # user_id, item_id, rating, timestamp (file order)
    users: pd.DataFrame    # user_id, gender (0/1), age_group (0..6), occupation (int)
    items: pd.DataFrame    # item_id, title, year (float, NaN if unknown), genres (list[int])
    genre_names: list[str]
    checksums: dict[str, str]  # file name -> sha256 of what was read


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
        gidx = {g: i for i, g in enumerate(ML1M_GENRES)}
        items["genres"] = items["genres"].str.split("|").map(lambda gs: [gidx[g] for g in gs if g in gidx])
        items["year"] = _year_from_title(items["title"])
    return RawData("ml-1m", ratings, users[["user_id", "gender", "age_group", "occupation"]],
                   items[["item_id", "title", "year", "genres"]], list(ML1M_GENRES), sums)


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
            "genres": [list(np.flatnonzero(row)) for row in flags],
        })
    return RawData("ml-100k", ratings, users[["user_id", "gender", "age_group", "occupation"]],
                   items, list(ML100K_GENRES), sums)


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
        """Write ``prepared.npz`` and ``meta.json`` into ``folder`` (``prepared_data``
        builds the folder under a temporary name, so a cache entry is complete or absent)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}_{c}": getattr(self, s)[c].to_numpy() for s in ("train", "val", "test")
                  for c in ("user", "item", "rating", "timestamp")}
        arrays.update(user_gender=self.user_gender, user_age=self.user_age,
                      user_occupation=self.user_occupation, item_genres=self.item_genres,
                      item_year=self.item_year, user_ids=self.user_ids, item_ids=self.item_ids)
        np.savez_compressed(folder / "prepared.npz", **arrays)
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
    if df.empty:
        raise DataError(f"no ratings left after the {min_count}-core filter of {raw.name} "
                        f"({len(raw.ratings):,} ratings before): lower data.min_count")
    s_train, s_val, s_test = time_split(len(df), fractions)
    empty = [name for name, part in zip(("train", "val", "test"), (s_train, s_val, s_test)) if part.stop <= part.start]
    if empty:
        raise DataError(f"the split {list(fractions)} of {len(df):,} ratings leaves {empty} empty: change data.split")

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


# -- the prepared-data cache ----------------------------------------------------------------
def build_prepared(d: dict, seed: int, folder: Path) -> PreparedData:
    """Load the dataset a ``data`` params section names (generated data is written into
    ``folder`` first) and apply the protocol."""
    if d["dataset"] == "synthetic":
        src = write_synthetic_ml1m(folder / "synthetic", seed=seed, **d["synthetic"])
        raw = parse_ml1m(src, verify=False)
        raw.name = "synthetic"
    else:
        raw = load(d["dataset"], d["path"], verify=d["verify_checksums"])
    return prepare(raw, d["min_count"], tuple(d["split"]))


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
