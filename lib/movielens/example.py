"""The example dataset of ``params/example/report.yaml``: a generated interaction log shaped
like a real one (``interactions.write_synthetic_log``: power-law item popularity,
heavy-tailed user activity, three years of timestamps, planted taste clusters) with a user
table and an item table, written under the column names a user's export might have
(``sku``, ``ts``, no rating). Generated, never committed: ``make example`` writes it.

    python -m lib.movielens.example data/example
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..core.files import atomic_folder
from .interactions import write_synthetic_log

SIZE = {"n_users": 3_000, "n_items": 800, "n_interactions": 90_000}


def write_example(folder: str | Path, seed: int = 0, **size) -> Path:
    """Write ``events.csv`` (user_id, sku, ts), ``users.csv`` (user_id, country, age) and
    ``items.parquet`` (sku, genres, price) into ``folder`` (complete or absent). A folder
    that already holds these very bytes is left as it is: its files keep their times, so
    the runs on it stay cached (their data key follows the files' sizes and times)."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as fresh:
        _write(Path(fresh), seed, size)
        names = sorted(p.name for p in Path(fresh).iterdir())
        if folder.is_dir() and sorted(p.name for p in folder.iterdir()) == names and all(
                (folder / n).read_bytes() == (Path(fresh) / n).read_bytes() for n in names):
            return folder
        with atomic_folder(folder) as out:
            for n in names:
                shutil.copyfile(Path(fresh) / n, out / n)
    return folder


def _write(out: Path, seed: int, size: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_log(tmp / "log.csv", seed=seed, string_ids=True, with_rating=False,
                            item_features_path=tmp / "items.csv", user_features_path=tmp / "users.csv",
                            **{**SIZE, **size})
        log = pacsv.read_csv(tmp / "log.csv")
        log = log.rename_columns(["sku" if c == "item_id" else "ts" if c == "timestamp" else c for c in log.column_names])
        pacsv.write_csv(log, out / "events.csv")
        items = pacsv.read_csv(tmp / "items.csv")
        pq.write_table(items.rename_columns(["sku" if c == "item_id" else c for c in items.column_names]),
                       out / "items.parquet")
        (out / "users.csv").write_bytes((tmp / "users.csv").read_bytes())


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data/example")
    print(f"example data written to {write_example(target)}")
