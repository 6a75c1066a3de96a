"""Files that are complete or absent: atomic writes (temp file in the same folder, then
``os.replace``), a complete-or-absent folder, an exclusive lock per cache entry, and
content hashes. Every write of a cached artifact, a report or a figure goes through here.
``DataError`` is the error of a data file that is missing or not what it claims to be.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class DataError(RuntimeError):
    """A data file is missing, corrupt, or not what it claims to be (the message names it)."""


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so numpy and torch keep the
    name); when the block ends without an error it replaces ``path`` in one step, else it
    is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any | None:
    """The JSON content of ``path``, or None if it is missing or unreadable (a cache
    entry that is not complete counts as absent and is rebuilt)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place when the block
    succeeds: readers see the whole folder or none of it. An existing ``folder`` is
    replaced."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(target: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target`` (a ``<target>.lock`` file beside it) for the
    block: parallel runs that need the same cache entry build it once; the others wait,
    then find it built."""
    import fcntl
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def built_once(record: str | Path, key: str, build, lock: str | Path | None = None) -> dict:
    """The JSON record of a cache entry whose ``key`` matches, else ``build()`` (which writes
    the entry and its record last, and returns the record) under ``lock`` (default: the
    record's folder), checking again once the lock is held: parallel runs that need one
    entry build it once, the others wait and read it."""
    record = Path(record)
    found = read_json(record)
    if found and found.get("key") == key:
        return found
    with file_lock(lock or record.parent):
        found = read_json(record)
        return found if found and found.get("key") == key else build()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
