"""Users' own interaction logs and side feature tables: CSV, TSV (either gzipped) or Parquet.

An interaction log is one row per (user, item, time) event, with an optional rating, in
whatever column names the file uses (``columns`` maps the roles to them). A feature table
is one row per user or item, keyed by the same ids as the log.

Why pyarrow: one library reads both CSV and Parquet, multi-threaded, into typed columnar
arrays, and reads only the columns asked for (``include_columns`` / ``columns=``), so a
20M-row log loads in seconds. Every conversion and check below is a vectorised arrow,
numpy or pandas operation: nothing loops over rows in Python.

CSV/TSV columns are read as strings and typed here, the same way as Parquet's typed
columns, instead of leaving it to arrow's type inference: an id column stays an id column
(``"007"`` is not ``7``), and one bad value in row 19,000,000 is reported with its row
and raw text instead of silently turning the whole column into strings.

Every bad input raises ``DataError`` naming the file and, where it applies, the column,
the first offending data row (1-based: row 1 is the first row after the header) and the
raw value found there. ``DataError`` is ``lib.movielens.data.DataError``.
"""
from __future__ import annotations

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

# DataError lives in lib.core.files (lib.movielens.data re-exports the same class): data
# reads its logs through this module, which therefore sits below it (.importlinter).
from ..core.files import DataError

# extension -> format; checked longest first, so ".csv.gz" is not mistaken for something else
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".tsv": "tsv", ".tsv.gz": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}
ROLES = ("user", "item", "timestamp", "rating")
TIMESTAMP_UNITS = ("auto", "s", "ms", "iso")
DUPLICATE_RULES = ("first", "last", "all")
FEATURE_TYPES = ("categorical", "multi_categorical", "numeric")

# Epoch seconds reach 1e11 only in the year 5138, while epoch milliseconds pass 1e11 in
# March 1973: a column whose largest absolute value exceeds it holds milliseconds.
MS_THRESHOLD = 1e11
# Cells of a numeric feature column that mean "missing" (compared trimmed, lower-case);
# anything else that is not a number is an error.
NUMERIC_MISSING = ["", "na", "n/a", "nan", "null", "none"]

_INT = r"^-?(0|[1-9][0-9]{0,17})$"  # a canonically written integer that fits int64
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_ISO = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"  # date, then optionally time and zone
        r"([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)?)?$")
_UNIT_FACTOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass
class Interactions:
    """An interaction log as read: original ids, float ratings, int64 epoch seconds."""
    frame: pd.DataFrame  # user_id, item_id (int64 or str), rating (float64), timestamp (int64, UTC s); file order
    has_rating: bool     # False: the log has no rating column and ``rating`` is 1.0 everywhere
    rows_read: int       # data rows in the file
    dropped: dict[str, int]    # reason -> rows dropped (only reasons that dropped any)
    checksums: dict[str, str]  # file path (as given) -> sha256 of its bytes
    timestamp_unit: str  # the unit used: "s", "ms", "iso" or "datetime" (a native timestamp column)


def file_format(path) -> str:
    """``"csv"``, ``"tsv"`` or ``"parquet"``, from the file name's extension."""
    name = Path(path).name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    raise DataError(f"{path}: unknown file type; accepted extensions: {', '.join(FORMATS)}")


# -- reading ---------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _parse_options(fmt: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")


def _column_names(path: Path, fmt: str) -> list[str]:
    """The file's column names, from its header (CSV: the first block only) or schema."""
    if fmt == "parquet":
        return pq.read_schema(path).names
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                            parse_options=_parse_options(fmt))
    return reader.schema.names


def _read_columns(path: Path, fmt: str, names: list[str], use_threads: bool = True) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(path, columns=names, use_threads=use_threads)
    # Strings, typed later (see the module docstring); only an empty cell is null, so a
    # category such as "NA" (Namibia) survives.
    convert = pacsv.ConvertOptions(include_columns=names, column_types={n: pa.string() for n in names},
                                   null_values=[""], strings_can_be_null=True)
    return pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=use_threads),
                          parse_options=_parse_options(fmt), convert_options=convert)


def _listing(names, limit: int = 30) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} columns)"


def _check_columns(path, names: list[str], wanted: dict[str, str]) -> None:
    missing = [(label, col) for label, col in wanted.items() if col not in names]
    if not missing:
        return
    parts = []
    for label, col in missing:
        near = [n for n in names if n.lower() == str(col).lower()]
        parts.append(f"'{col}' ({label}{'; did you mean ' + repr(near[0]) + '?' if near else ''})")
    raise DataError(f"{path}: missing column {', '.join(parts)}; the file has columns {_listing(names)}")


def _read(path, wanted: dict[str, str]) -> tuple[pa.Table, str]:
    """The columns ``wanted`` (what they are for -> column name) of ``path`` as an arrow
    table, and the sha256 of the file (hashed in a second thread while arrow parses)."""
    p = Path(path)
    fmt = file_format(path)
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise DataError(f"{path}: no rows (the file is empty)")
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            names = _column_names(p, fmt)
            _check_columns(path, names, wanted)
            digest = pool.submit(_sha256, p)  # after the header checks: a bad column fails at once
            cols = list(dict.fromkeys(wanted.values()))
            try:
                table = _read_columns(p, fmt, cols)
            except pa.ArrowInvalid as exc:
                if "CSV parse error" not in str(exc) or "Row #" in str(exc):
                    raise
                # Only a single-threaded read knows the line of a malformed row: re-read
                # (slow, but only on this error path) for a message that points at it.
                table = _read_columns(p, fmt, cols, use_threads=False)
        except (pa.ArrowException, OSError, EOFError) as exc:
            msg = str(exc)
            if "Empty CSV file" in msg:
                raise DataError(f"{path}: no rows (no header and no data)") from exc
            msg = re.sub(r"Row #(\d+)", r"line \1", msg)
            raise DataError(f"{path}: cannot read this {fmt} file ({type(exc).__name__}: {msg})") from exc
        sha = digest.result()
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows (a header but no data)")
    return table, sha


# -- checks and conversions of one column ------------------------------------------------------

def _row_error(path, column: str, index: int, value, what: str) -> DataError:
    shown = "an empty value" if value is None or value == "" else repr(value)
    return DataError(f"{path}: column '{column}', row {index + 1}: {what} (found {shown})")


def _first(mask) -> int:
    """Index of the first True of a boolean arrow or numpy array without nulls, else -1."""
    if isinstance(mask, np.ndarray):
        hits = np.flatnonzero(mask)
        return int(hits[0]) if len(hits) else -1
    return pc.index(mask, True).as_py()


def _plain(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encoded (a pandas categorical written to Parquet) and large or view
    strings as plain values."""
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
        col = pc.cast(col, pa.string())
    return col


def _is_number_type(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _missing(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null, NaN, or an empty string."""
    mask = pc.is_null(col, nan_is_null=True)
    if pa.types.is_string(col.type):
        mask = pc.or_kleene(mask, pc.equal(col, ""))
    return mask


def _require(col: pa.ChunkedArray, path, column: str, what: str) -> None:
    i = _first(_missing(col))
    if i >= 0:
        raise _row_error(path, column, i, col[i].as_py(), what)


def _id_values(col: pa.ChunkedArray, path, column: str) -> pa.ChunkedArray:
    """Ids or category values as int64 when every (non-null) value is a whole number (a
    string must be written canonically: ``"007"`` stays a string), else as strings."""
    col = _plain(col)
    t = col.type
    if pa.types.is_integer(t):
        try:
            return pc.cast(col, pa.int64())
        except pa.ArrowInvalid:  # uint64 beyond int64
            return pc.cast(col, pa.string())
    if pa.types.is_string(t):
        # A leading zero ("007", "-01", "00.5") marks a code, not a number.
        try:
            ints = pc.cast(col, pa.int64())  # rejects whitespace and "+"
        except pa.ArrowInvalid:
            ints = None
        if ints is not None:  # digits only: a cheap test for a leading zero
            zero = pc.or_(pc.and_(pc.starts_with(col, "0"), pc.greater(pc.binary_length(col), 1)),
                          pc.starts_with(col, "-0"))
            return col if pc.any(zero).as_py() else ints
        if pc.any(pc.match_substring_regex(col, r"^-?0[0-9]")).as_py():
            return col
        try:  # "12.0": a float column written out; fails at once on "u12"
            floats = pc.cast(col, pa.float64())
        except pa.ArrowInvalid:
            return col
        return _whole_floats(floats, col)
    if pa.types.is_floating(t):
        return _whole_floats(pc.cast(col, pa.float64()), pc.cast(col, pa.string()))
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: column '{column}' has type {t}: not ids or categories") from exc


def _whole_floats(floats: pa.ChunkedArray, fallback: pa.ChunkedArray) -> pa.ChunkedArray:
    floats = pc.if_else(pc.is_nan(floats), None, floats)
    whole = pc.and_(pc.less_equal(pc.abs(floats), 2.0 ** 62), pc.equal(pc.floor(floats), floats))
    if pc.all(whole).as_py() is not False:
        return pc.cast(floats, pa.int64())
    return fallback


def _writable(values: np.ndarray) -> np.ndarray:
    """Arrow hands out read-only views; pandas would refuse to assign into them."""
    return values if values.flags.writeable else values.copy()


def _pandas(values: pa.ChunkedArray) -> pd.Series:
    """int64 (pandas ``Int64`` when some are missing) or pandas strings (NaN missing)."""
    if pa.types.is_integer(values.type):
        if values.null_count:
            return values.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
        return pd.Series(_writable(values.to_numpy()), dtype=np.int64)
    return values.to_pandas()


def _numbers(col: pa.ChunkedArray, path, column: str, what: str) -> np.ndarray:
    """A string column without missing values as int64 (all integers) or float64."""
    try:
        return pc.cast(col, pa.int64()).to_numpy()
    except pa.ArrowInvalid:
        pass
    trimmed = pc.utf8_trim_whitespace(col)
    i = _first(pc.invert(pc.match_substring_regex(trimmed, _NUMBER)))
    if i >= 0:
        raise _row_error(path, column, i, col[i].as_py(), what)
    return pc.cast(pc.replace_substring_regex(trimmed, r"^\+", ""), pa.float64()).to_numpy()


def _finite(values: np.ndarray, path, column: str, col: pa.ChunkedArray, what: str) -> np.ndarray:
    if values.dtype.kind == "f":
        i = _first(~np.isfinite(values))
        if i >= 0:
            raise _row_error(path, column, i, col[i].as_py(), what)
    return values


# -- timestamps -------------------------------------------------------------------------------

def _datetime_seconds(col: pa.ChunkedArray) -> np.ndarray:
    """Epoch seconds (floored) of an arrow timestamp or date column; the stored integers
    are UTC, and a column without a time zone is taken as UTC."""
    t = col.type
    if pa.types.is_date32(t):
        return pc.cast(col, pa.int32()).to_numpy().astype(np.int64) * 86_400
    if pa.types.is_date64(t):
        return pc.cast(col, pa.int64()).to_numpy() // 1_000
    return pc.cast(col, pa.int64()).to_numpy() // _UNIT_FACTOR[t.unit]


def _iso_seconds(col: pa.ChunkedArray, path, column: str) -> np.ndarray:
    """Epoch seconds of ISO 8601 dates or datetimes (naive = UTC, offsets applied)."""
    # Fast path: arrow's own ISO parser, when all values are naive whole seconds (or
    # dates), or all carry a zone.
    for target in (pa.timestamp("s"), pa.timestamp("s", "UTC")):
        try:
            return _datetime_seconds(pc.cast(col, target))
        except pa.ArrowInvalid:
            pass
    trimmed = pc.utf8_trim_whitespace(col)
    i = _first(pc.invert(pc.match_substring_regex(trimmed, _ISO)))
    if i >= 0:
        raise _row_error(path, column, i, col[i].as_py(), "not an ISO 8601 date or datetime")
    parsed = pd.to_datetime(trimmed.to_pandas(), format="ISO8601", utc=True, errors="coerce")
    i = _first(parsed.isna().to_numpy())
    if i >= 0:
        raise _row_error(path, column, i, col[i].as_py(), "not a valid date or datetime")
    naive = parsed.dt.tz_localize(None).to_numpy()  # UTC wall clock
    unit = np.datetime_data(naive.dtype)[0]
    return naive.view(np.int64) // _UNIT_FACTOR[unit]


def _timestamps(col: pa.ChunkedArray, unit: str, path, column: str) -> tuple[np.ndarray, str]:
    """int64 epoch seconds and the unit used (see ``read_interactions``)."""
    col = _plain(col)
    _require(col, path, column, "missing timestamp")
    t = col.type
    names = {"s": "epoch seconds", "ms": "epoch milliseconds", "auto": "epoch seconds or milliseconds"}
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if unit in ("s", "ms"):
            raise _row_error(path, column, 0, str(col[0].as_py()),
                             f"a datetime column ({t}), not {names[unit]}: set timestamp_unit to auto")
        return _datetime_seconds(col), "datetime"
    if pa.types.is_string(t):
        if unit == "auto" and not re.match(_NUMBER, col[0].as_py().strip()):
            unit = "iso"  # decided by the first row; an odd row later is reported as such
        if unit == "iso":
            return _iso_seconds(col, path, column), "iso"
        values = _numbers(col, path, column, f"not a number of {names[unit]}")
    elif _is_number_type(t):
        if unit == "iso":
            raise _row_error(path, column, 0, col[0].as_py(),
                             "a number, not an ISO 8601 date or datetime (timestamp_unit iso)")
        values = pc.cast(col, pa.int64() if pa.types.is_integer(t) else pa.float64()).to_numpy()
    else:
        raise DataError(f"{path}: column '{column}' has type {t}: not epoch seconds, "
                        f"milliseconds or datetimes")
    values = _finite(values, path, column, col, f"not a finite number of {names[unit]}")
    if unit == "auto":
        unit = "ms" if np.abs(values).max() > MS_THRESHOLD else "s"
    elif unit == "s":
        i = _first(np.abs(values) > MS_THRESHOLD)
        if i >= 0:
            raise _row_error(path, column, i, col[i].as_py(),
                             "epoch seconds after the year 5138: milliseconds? (timestamp_unit ms)")
    if unit == "ms":
        values = values // 1_000 if values.dtype.kind == "i" else np.floor(values / 1_000)
    elif values.dtype.kind == "f":
        values = np.floor(values)
    return values.astype(np.int64), unit


# -- interaction logs -----------------------------------------------------------------------

def _roles(path, columns: dict) -> dict[str, str | None]:
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise DataError(f"{path}: unknown data.columns keys {unknown}; known: {list(ROLES)}")
    roles = {role: columns.get(role) for role in ROLES}
    for role in ("user", "item", "timestamp"):
        if not roles[role]:
            raise DataError(f"{path}: data.columns.{role} must name the column of the {role}s")
    return roles


def _codes(values: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Dense codes of the values (arrow hashing; few distinct values, so fast) and how
    many distinct values there are."""
    enc = values.combine_chunks().dictionary_encode()
    return enc.indices.to_numpy().astype(np.int64), len(enc.dictionary)


def _duplicate_keep(user: pa.ChunkedArray, item: pa.ChunkedArray, ts: np.ndarray, rule: str) -> np.ndarray | None:
    """Rows to keep under ``rule`` ("first"/"last": the earliest/latest timestamp of each
    (user, item) pair, ties in file order), or None when no pair repeats."""
    ucode, _ = _codes(user)
    icode, n_items = _codes(item)
    key = ucode * n_items + icode
    # Repeated pairs by sorting, not hashing: hashing ~20M mostly distinct keys thrashes
    # the cache and is twice as slow as a sort.
    ordered = np.sort(key)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    if not len(repeated):
        return None
    involved = np.flatnonzero(pd.Series(key).isin(repeated).to_numpy())
    # Only the rows of repeated pairs are sorted: stably by time, so ties keep file order.
    order = involved[np.argsort(ts[involved], kind="stable")]
    drop = pd.Series(key[order]).duplicated(keep=rule).to_numpy()
    keep = np.ones(len(key), bool)
    keep[order[drop]] = False
    return keep


def read_interactions(path, columns: dict, timestamp_unit: str = "auto",
                      duplicates: str = "first") -> Interactions:
    """Read an interaction log (CSV, TSV, either optionally gzipped, or Parquet).

    ``columns``: ``{"user": ..., "item": ..., "timestamp": ..., "rating": ... or None}``,
    the file's column names. Ids stay as in the file: int64 when the column holds
    integers, else strings. Timestamps become int64 epoch seconds (UTC); ``timestamp_unit``
    ``auto`` takes a numeric column as seconds, or milliseconds when its largest absolute
    value is over 1e11, a string column as ISO 8601 dates or datetimes (naive = UTC) or,
    if its first value is a number, as numbers like a numeric column, and a native
    datetime column as it is; ``s`` and ``ms`` insist on numbers, ``iso`` on ISO strings
    (or native datetimes). ``duplicates``: of each repeated (user, item) pair keep the
    ``first`` (earliest) row, the ``last`` (latest), or ``all`` rows. Rows stay in file order.
    """
    if timestamp_unit not in TIMESTAMP_UNITS:
        raise DataError(f"{path}: data.timestamp_unit is '{timestamp_unit}'; known: {list(TIMESTAMP_UNITS)}")
    if duplicates not in DUPLICATE_RULES:
        raise DataError(f"{path}: data.duplicates is '{duplicates}'; known: {list(DUPLICATE_RULES)}")
    roles = _roles(path, columns)
    table, sha = _read(path, {f"data.columns.{r}": c for r, c in roles.items() if c})
    n = table.num_rows

    ids = {}
    for role in ("user", "item"):
        col = _plain(table[roles[role]])
        _require(col, path, roles[role], f"missing {role} id")
        ids[role] = _id_values(col, path, roles[role])
    ts, unit = _timestamps(table[roles["timestamp"]], timestamp_unit, path, roles["timestamp"])
    if roles["rating"]:
        col = _plain(table[roles["rating"]])
        _require(col, path, roles["rating"], "missing rating")
        if pa.types.is_string(col.type):
            rating = _numbers(col, path, roles["rating"], "not a number").astype(np.float64)
        elif _is_number_type(col.type):
            rating = pc.cast(col, pa.float64()).to_numpy()
        else:
            raise DataError(f"{path}: column '{roles['rating']}' has type {col.type}, not numbers")
        rating = _writable(_finite(rating, path, roles["rating"], col, "not a finite number"))
    else:
        rating = np.ones(n, np.float64)

    del table
    dropped = {}
    keep = _duplicate_keep(ids["user"], ids["item"], ts, duplicates) if duplicates != "all" else None
    if keep is not None:
        dropped[f"duplicate (user, item) pairs (rule: {duplicates})"] = int(n - keep.sum())
        ids = {role: pc.filter(values, pa.array(keep)) for role, values in ids.items()}
        rating, ts = rating[keep], ts[keep]
    # copy=False: the arrays are this function's own, and pandas need not copy them into one block
    frame = pd.DataFrame({"user_id": _pandas(ids["user"]).array, "item_id": _pandas(ids["item"]).array,
                          "rating": rating, "timestamp": ts}, copy=False)
    return Interactions(frame=frame, has_rating=bool(roles["rating"]), rows_read=n, dropped=dropped,
                        checksums={str(path): sha}, timestamp_unit=unit)


# -- feature tables -------------------------------------------------------------------------

def _specs(path, columns: dict) -> dict[str, dict]:
    specs = {}
    for name, spec in columns.items():
        if not isinstance(spec, dict) or spec.get("type") not in FEATURE_TYPES:
            raise DataError(f"{path}: feature '{name}' needs a type, one of {list(FEATURE_TYPES)} (got {spec!r})")
        spec = dict(spec, column=spec.get("column") or name)  # other keys (vocabulary, ...) ride along
        if spec["type"] == "multi_categorical":
            spec["sep"] = spec.get("sep", "|")
            if not isinstance(spec["sep"], str) or not spec["sep"]:
                raise DataError(f"{path}: feature '{name}': sep must be a non-empty string")
        specs[name] = spec
    return specs


def _numeric_feature(col: pa.ChunkedArray, path, column: str) -> np.ndarray:
    col = _plain(col)
    t = col.type
    if _is_number_type(t) or pa.types.is_boolean(t):
        return _writable(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False))  # nulls -> NaN
    if not pa.types.is_string(t):
        raise DataError(f"{path}: column '{column}' has type {t}, not numbers")
    trimmed = pc.utf8_trim_whitespace(col)
    missing = pc.fill_null(pc.is_in(pc.utf8_lower(trimmed), value_set=pa.array(NUMERIC_MISSING)), True)
    bad = pc.and_(pc.invert(missing), pc.invert(pc.match_substring_regex(trimmed, _NUMBER)))
    i = _first(pc.fill_null(bad, False))
    if i >= 0:
        raise _row_error(path, column, i, col[i].as_py(), "not a number")
    present = pc.if_else(missing, pa.scalar(None, pa.string()), pc.replace_substring_regex(trimmed, r"^\+", ""))
    return _writable(pc.cast(present, pa.float64()).to_numpy(zero_copy_only=False))


def _multi_categorical(col: pa.ChunkedArray, sep: str) -> list[list[str]]:
    """Per row, the stripped non-empty tokens (a list column is taken as tokens already)."""
    col = _plain(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lists = pc.cast(col.combine_chunks(), pa.list_(pa.string()))
    else:
        lists = pc.split_pattern(pc.cast(col, pa.string()).combine_chunks(), pattern=sep)
    n = len(lists)
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.fill_null(pc.not_equal(tokens, ""), False)
    counts = np.bincount(parents[keep.to_numpy(zero_copy_only=False)], minlength=n)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), tokens.filter(keep)).to_pylist()


def _interaction_ids(ids) -> tuple[str, pd.Index]:
    """``"int"`` or ``"str"``, and the distinct ids of the interactions."""
    s = ids if isinstance(ids, pd.Series) else pd.Series(np.asarray(ids))
    if pd.api.types.is_integer_dtype(s.dtype) and not s.isna().any():
        return "int", pd.Index(s.unique().astype(np.int64))
    if pd.api.types.is_float_dtype(s.dtype) and np.all(np.mod(s.to_numpy(), 1) == 0):
        return "int", pd.Index(s.unique().astype(np.int64))
    return "str", pd.Index(s.astype(str).unique())


def _coerce_keys(keys: pa.ChunkedArray, kind: str) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Keys in the interactions' id type, and which keys could be converted at all."""
    if kind == "str":
        return (pc.cast(keys, pa.string()) if pa.types.is_integer(keys.type) else keys), np.ones(len(keys), bool)
    if pa.types.is_integer(keys.type):
        return keys, np.ones(len(keys), bool)
    ok = pc.match_substring_regex(keys, _INT)
    return pc.cast(pc.if_else(ok, keys, "0"), pa.int64()), ok.to_numpy(zero_copy_only=False)


def read_feature_table(path, key: str, columns: dict, ids) -> tuple[pd.DataFrame, str]:
    """Read a table of user or item features and the sha256 of its file.

    ``key``: the id column; ``columns``: ``{feature name: {"type": "categorical" |
    "multi_categorical" | "numeric", "sep": "|" (multi), "column": file column (default:
    the feature name)}}``; ``ids``: the ids of the interactions, whose type (int64 or str)
    the keys are converted to. Returns a frame indexed by id (index name ``id``), one
    column per feature in ``columns`` order: categorical values as in the file (int64 for
    an integer column, pandas ``Int64`` if it has missing values, else str with NaN),
    multi-categorical as lists of stripped non-empty tokens, numeric as float64 (NaN
    missing). Rows whose key is not an interaction id are dropped; their number is in
    ``frame.attrs["unmatched_rows"]``.
    """
    specs = _specs(path, columns)
    wanted = {"the key": key, **{f"feature '{n}'": s["column"] for n, s in specs.items()}}
    table, sha = _read(path, wanted)

    raw_keys = _plain(table[key])
    _require(raw_keys, path, key, "missing key")
    keys = _id_values(raw_keys, path, key)
    as_pandas = _pandas(keys)
    dup = as_pandas.duplicated().to_numpy()
    i = _first(dup)
    if i >= 0:
        j = _first((as_pandas == as_pandas.iloc[i]).to_numpy())
        raise _row_error(path, key, i, raw_keys[i].as_py(), f"duplicate key (first at row {j + 1})")

    kind, known = _interaction_ids(ids)
    coerced, convertible = _coerce_keys(keys, kind)
    index = pd.Index(_pandas(coerced), name="id")
    match = convertible & index.isin(known)
    if not match.any():
        first_ids = pd.Series(np.asarray(ids)).head(5).tolist()
        raise DataError(f"{path}: no value of key column '{key}' matches an interaction id "
                        f"(first keys: {as_pandas.head(5).tolist()}; first interaction ids: {first_ids})")

    features = {}
    for name, spec in specs.items():
        col = table[spec["column"]]
        if spec["type"] == "numeric":
            values = _numeric_feature(col, path, spec["column"])
        elif spec["type"] == "multi_categorical":
            values = pd.Series(_multi_categorical(col, spec["sep"]), dtype=object)
        else:
            values = _pandas(_id_values(col, path, spec["column"]))
        features[name] = values.array if isinstance(values, pd.Series) else values  # positional, not by label
    frame = pd.DataFrame(features, index=index)
    frame = frame[match]
    frame.attrs["unmatched_rows"] = int(len(match) - match.sum())
    return frame, sha


# -- generated logs for tests and examples ------------------------------------------------------

SYNTHETIC_START = 1_420_070_400  # 2015-01-01T00:00:00Z
SYNTHETIC_GENRES = ["action", "adventure", "animation", "comedy", "crime", "documentary", "drama",
                    "family", "fantasy", "horror", "music", "romance", "scifi", "thriller", "western"]
SYNTHETIC_COUNTRIES = ["US", "GB", "DE", "FR", "BR", "IN", "JP", "CA", "ES", "IT"]


def _write_table(table: pa.Table, path: Path) -> None:
    """CSV, TSV (gzipped for ``.gz``) or Parquet, by the extension of ``path``."""
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(table, path)
        return
    sep = "\t" if fmt == "tsv" else ","
    # No quoting (generated values hold no separators); the header is written here, since
    # arrow's writer quotes the column names whatever the quoting style.
    opts = pacsv.WriteOptions(include_header=False, delimiter=sep, quoting_style="none", batch_size=1 << 16)
    gz = path.name.lower().endswith(".gz")
    with (pa.CompressedOutputStream(str(path), "gzip") if gz else pa.OSFile(str(path), "wb")) as out:
        out.write((sep.join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, out, opts)


def _zipf_offset(n_users: int, n_items: int, n_interactions: int) -> int:
    """The smallest b (from a grid) for which the most popular item of a 1/(rank + b)
    popularity is expected from at most 30% of the users: pure Zipf (b = 0) gives one
    item ~10% of all interactions, more than there are users to make them once each."""
    for b in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000):
        weights = 1.0 / (np.arange(1, n_items + 1) + b)
        if n_interactions * weights[0] / weights.sum() <= 0.3 * n_users:
            return b
    return 10_000


def _in_sorted(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which ``values`` occur in the sorted array ``ordered``."""
    if not len(ordered):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return ordered[at] == values


def _ids(prefix: str, width: int, index: np.ndarray, n: int, string_ids: bool) -> pa.Array:
    """1-based ids: int64, or strings like ``u000123`` (formatted once per id, then taken)."""
    if not string_ids:
        return pa.array(index.astype(np.int64) + 1)
    digits = max(width, len(str(n)))
    names = np.char.add(prefix, np.char.zfill((np.arange(n) + 1).astype(str), digits))
    return pc.take(pa.array(names), pa.array(index))


def write_synthetic_log(path, n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                        years: float = 3.0, string_ids: bool = False, with_rating: bool = True,
                        item_features_path=None, user_features_path=None) -> Path:
    """Write a generated interaction log shaped like a real one, and optionally its item
    and user feature tables; the same arguments give the same bytes.

    - Taste structure: users and items fall into (up to) 20 clusters; each interaction is
      with an item of the user's cluster with probability 0.6, else with any item.
    - Item popularity is a power law, 1/(rank + b) (exponent 1; the offset b keeps the
      head item within reach of the number of users, see ``_zipf_offset``).
    - User activity is heavy-tailed (lognormal, sigma 1.2; at least one interaction each
      when there are enough, at most ~n_items/4 expected per user).
    - Each user is active over a personal period (a Beta(0.6, 2) share of ``years``,
      placed at random) from 2015-01-01; timestamps are epoch seconds, uniform in it.
    - Ratings 1-5 (``with_rating``): higher for items of the user's cluster, plus user and
      item biases and noise.
    - A repeated (user, item) pair is drawn again (three times from the same distribution,
      which is sampling without replacement, then once uniformly): repeats remain, as in a
      real log, but as a small share.

    Columns: ``user_id, item_id, rating, timestamp`` (no ``rating`` without
    ``with_rating``), rows grouped by user in time order. ``string_ids``: ``u000123`` and
    ``sku00042`` instead of 1-based integers. Item features: ``item_id, genres`` (``a|b``
    from 15 genres, following the cluster), ``price`` (lognormal, ~5% missing); user
    features: ``user_id, country`` (10 codes, following the cluster), ``age`` (~3% missing).
    CSV, TSV (``.gz``: gzipped) or Parquet by each path's extension.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    n_clusters = min(20, n_items)
    item_cluster = rng.integers(0, n_clusters, n_items)
    present = np.unique(item_cluster)
    user_cluster = present[rng.integers(0, len(present), n_users)]

    # Popularity, and inverse-CDF tables: over all items, and per cluster, where cluster c
    # owns [c, c + 1) of one increasing array over the items sorted by cluster.
    weight = 1.0 / (rng.permutation(n_items) + 1 + _zipf_offset(n_users, n_items, n_interactions))
    global_cdf = np.cumsum(weight)
    global_cdf /= global_cdf[-1]
    by_cluster = np.argsort(item_cluster, kind="stable")
    cc, wc = item_cluster[by_cluster], weight[by_cluster]
    within = pd.Series(wc).groupby(cc).cumsum().to_numpy()
    cluster_cdf = cc + within / np.bincount(cc, weights=wc, minlength=n_clusters)[cc]
    last = np.r_[cc[1:] != cc[:-1], True]
    cluster_cdf[last] = cc[last] + 1.0  # exact ends: c + u, u in [0, 1), stays in cluster c

    def draw(clusters: np.ndarray) -> np.ndarray:
        own = rng.random(len(clusters)) < 0.6
        u = rng.random(len(clusters))
        out = np.searchsorted(global_cdf, u, side="right")
        out[own] = by_cluster[np.searchsorted(cluster_cdf, clusters[own] + u[own], side="right")]
        return np.minimum(out, n_items - 1)

    activity = rng.lognormal(0.0, 1.2, n_users)
    floor = 1 if n_interactions >= n_users else 0
    extra = n_interactions - floor * n_users
    p = activity / activity.sum()
    for _ in range(5):  # cap the expected count of a user at ~n_items / 4
        p = np.minimum(p, max(n_items / 4, 1) / max(extra, 1))
        p /= p.sum()
    counts = floor + rng.multinomial(extra, p)
    user = np.repeat(np.arange(n_users), counts)
    item = draw(user_cluster[user])
    # Repeats of a (user, item) pair: one stable sort finds them (the later rows of a pair),
    # and the distinct pairs. A redraw is accepted if its pair is new; rejected rows are
    # drawn again next round, and those still rejected after the last stay repeats.
    key = user * n_items + item
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    same = ordered[1:] == ordered[:-1]
    again, distinct = order[1:][same], ordered[np.r_[True, ~same]]
    del key, order, ordered, same
    added = np.empty(0, np.int64)
    for attempt in range(4):
        if not len(again):
            break
        new = draw(user_cluster[user[again]]) if attempt < 3 else rng.integers(0, n_items, len(again))
        new_key = user[again] * n_items + new
        taken = _in_sorted(distinct, new_key) | _in_sorted(added, new_key) | pd.Series(new_key).duplicated().to_numpy()
        item[again[~taken]] = new[~taken]
        added = np.sort(np.concatenate([added, new_key[~taken]]))
        again = again[taken]

    span = int(years * 365.25 * 86_400)
    share = np.maximum(rng.beta(0.6, 2.0, n_users), 86_400 / max(span, 1))
    length = share * span
    begin = rng.random(n_users) * (span - length)
    offset = (begin[user] + rng.random(len(user)) * length[user]).astype(np.int64)
    order = np.argsort(user * (1 << 33) + offset, kind="stable")  # by user, then time (offset < 2^33 s: 272 years)
    user, item, offset = user[order], item[order], offset[order]

    columns = {"user_id": _ids("u", 6, user, n_users, string_ids),
               "item_id": _ids("sku", 5, item, n_items, string_ids)}
    if with_rating:
        match = item_cluster[item] == user_cluster[user]
        score = (3.3 + np.where(match, 0.9, -0.4) + rng.normal(0, 0.35, n_users)[user]
                 + rng.normal(0, 0.35, n_items)[item] + rng.normal(0, 0.8, len(user)))
        columns["rating"] = pa.array(np.clip(np.rint(score), 1, 5).astype(np.int8))
    columns["timestamp"] = pa.array(SYNTHETIC_START + offset)
    _write_table(pa.table(columns), path)

    if item_features_path is not None:  # own random streams: the log is the same with or without
        frng = np.random.default_rng([seed, 1])
        hot = frng.random((n_items, len(SYNTHETIC_GENRES))) < 0.04
        rows = np.arange(n_items)
        hot[rows, item_cluster % len(SYNTHETIC_GENRES)] |= frng.random(n_items) < 0.85
        hot[rows, (item_cluster * 7 + 3) % len(SYNTHETIC_GENRES)] |= frng.random(n_items) < 0.4
        hot[rows[~hot.any(axis=1)], item_cluster[~hot.any(axis=1)] % len(SYNTHETIC_GENRES)] = True
        r, g = np.nonzero(hot)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n_items))]).astype(np.int32)
        genres = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets),
                                                         pc.take(pa.array(SYNTHETIC_GENRES), pa.array(g))), "|")
        price = np.round(frng.lognormal(2.5 + 0.15 * (item_cluster % 4), 0.7), 2)
        _write_table(pa.table({"item_id": _ids("sku", 5, rows, n_items, string_ids), "genres": genres,
                               "price": pa.array(price, mask=frng.random(n_items) < 0.05)}),
                     Path(item_features_path))
    if user_features_path is not None:
        frng = np.random.default_rng([seed, 2])
        home = frng.random(n_users) < 0.6
        country = np.where(home, user_cluster % len(SYNTHETIC_COUNTRIES),
                           frng.integers(0, len(SYNTHETIC_COUNTRIES), n_users))
        age = np.clip(np.rint(frng.normal(35 + 2 * (user_cluster % 5), 11)), 16, 80).astype(np.int64)
        _write_table(pa.table({"user_id": _ids("u", 6, np.arange(n_users), n_users, string_ids),
                               "country": pc.take(pa.array(SYNTHETIC_COUNTRIES), pa.array(country)),
                               "age": pa.array(age, mask=frng.random(n_users) < 0.03)}),
                     Path(user_features_path))
    return path
