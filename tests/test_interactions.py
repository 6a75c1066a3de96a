"""Reading users' interaction logs and feature tables (lib/movielens/interactions.py), on
generated and hand-written files only: formats, timestamps, duplicates, every bad input's
message, feature tables, and the generator's determinism and shape."""
import gzip
import hashlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from lib.core.files import DataError
from lib.movielens import interactions as it

COLS = {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"}
RENAMED = {"user_id": "Customer", "item_id": "sku", "rating": "stars", "timestamp": "when"}
RENAMED_COLS = {"user": "Customer", "item": "sku", "timestamp": "when", "rating": "stars"}


def test_the_error_is_the_data_modules_error():
    from lib.movielens import data
    assert it.DataError is data.DataError is DataError


def _write(table: pa.Table, path) -> None:
    """Write with pyarrow directly (not the module's writer), by extension."""
    name = str(path)
    if name.endswith(".parquet"):
        pq.write_table(table, path)
        return
    opts = pacsv.WriteOptions(delimiter="\t" if ".tsv" in name else ",")
    if name.endswith(".gz"):
        with pa.CompressedOutputStream(name, "gzip") as out:
            pacsv.write_csv(table, out, opts)
    else:
        pacsv.write_csv(table, name, opts)


def _csv(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return str(info.value)


# -- formats ----------------------------------------------------------------------------------

@pytest.mark.parametrize("string_ids", [False, True])
def test_csv_tsv_gz_parquet_with_renamed_columns_read_the_same(tmp_path, string_ids):
    src = it.write_synthetic_log(tmp_path / "src.csv", n_users=60, n_items=50, n_interactions=800,
                                 seed=3, string_ids=string_ids)
    table = pacsv.read_csv(src, convert_options=pacsv.ConvertOptions(
        column_types={"user_id": pa.string(), "item_id": pa.string()} if string_ids else {}))
    table = table.rename_columns([RENAMED[c] for c in table.column_names])
    # a column the reader must skip, placed first
    table = table.add_column(0, "noise", pa.array(np.arange(table.num_rows) % 7))
    frames = {}
    for name in ("log.csv", "log.tsv", "log.csv.gz", "log.tsv.gz", "log.parquet"):
        path = tmp_path / name
        _write(table, path)
        got = it.read_interactions(path, RENAMED_COLS, duplicates="all")
        assert got.rows_read == 800 and got.has_rating and got.dropped == {}
        assert got.timestamp_unit == "s"
        assert got.checksums == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
        frames[name] = got.frame
    reference = frames.pop("log.csv")
    assert list(reference.columns) == ["user_id", "item_id", "rating", "timestamp"]
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(frame, reference, obj=name)
    # ... and equal to what was written
    expected = table.to_pandas()
    assert reference["user_id"].tolist() == expected["Customer"].tolist()
    assert reference["item_id"].tolist() == expected["sku"].tolist()
    assert reference["rating"].tolist() == expected["stars"].astype(float).tolist()
    assert reference["timestamp"].tolist() == expected["when"].tolist()
    assert reference["rating"].dtype == np.float64 and reference["timestamp"].dtype == np.int64
    for frame in (reference, *frames.values()):  # plain, writable columns
        frame.loc[0, ["user_id", "item_id", "rating", "timestamp"]] = [frame["user_id"].iloc[1],
                                                                      frame["item_id"].iloc[1], 9.0, 0]
    if string_ids:
        assert reference["user_id"].iloc[0] == "u000001" and reference["item_id"].iloc[0].startswith("sku")
        assert not pd.api.types.is_numeric_dtype(reference["user_id"])
    else:
        assert reference["user_id"].dtype == np.int64 and reference["item_id"].dtype == np.int64


def test_ids_with_leading_zeros_stay_strings_and_no_rating_column_means_ones(tmp_path):
    path = _csv(tmp_path, "log.csv", "u,i,t\n007,1,10\n7,2,20\n")
    got = it.read_interactions(path, {"user": "u", "item": "i", "timestamp": "t", "rating": None})
    assert got.frame["user_id"].tolist() == ["007", "7"]  # "007" is not 7
    assert got.frame["item_id"].dtype == np.int64 and got.frame["item_id"].tolist() == [1, 2]
    assert got.frame["rating"].tolist() == [1.0, 1.0] and not got.has_rating


def test_whole_float_ids_in_parquet_are_int64(tmp_path):
    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1.0, 2.0], "i": pa.array(["a", "b"]).dictionary_encode(),
                             "t": [5, 6]}), path)
    frame = it.read_interactions(path, {"user": "u", "item": "i", "timestamp": "t"}).frame
    assert frame["user_id"].dtype == np.int64 and frame["user_id"].tolist() == [1, 2]
    assert frame["item_id"].tolist() == ["a", "b"]


# -- timestamps -------------------------------------------------------------------------------

INSTANTS = [1_420_070_400, 1_431_234_567, 1_500_000_000, 1_609_459_199]  # the first at midnight UTC


def _log(tmp_path, name, values, **arrow_types):
    table = pa.table({"user": [1, 2, 3, 4], "item": [1, 1, 2, 2],
                      "ts": pa.array(values, arrow_types.get("type"))})
    _write(table, tmp_path / name)
    return tmp_path / name


def _read_ts(path, unit="auto"):
    got = it.read_interactions(path, {"user": "user", "item": "item", "timestamp": "ts"}, timestamp_unit=unit)
    return got.frame["timestamp"].tolist(), got.timestamp_unit


def test_seconds_milliseconds_and_iso_give_the_same_seconds(tmp_path):
    plus2 = timezone(timedelta(hours=2))
    minus5 = timezone(timedelta(hours=-5))
    cases = {
        "s": [str(t) for t in INSTANTS],
        "ms": [str(t * 1000 + 999) for t in INSTANTS],  # floored to the second
        "iso naive": [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") for t in INSTANTS],
        "iso offset": [datetime.fromtimestamp(t, plus2).isoformat() for t in INSTANTS],
        "iso Z, fractions": [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.75Z")
                             for t in INSTANTS],
        "iso mixed zones": [datetime.fromtimestamp(INSTANTS[0], timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                            datetime.fromtimestamp(INSTANTS[1], plus2).isoformat(),
                            datetime.fromtimestamp(INSTANTS[2], minus5).isoformat(),
                            datetime.fromtimestamp(INSTANTS[3], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")],
    }
    units = {"s": "s", "ms": "ms"}
    for i, (case, values) in enumerate(cases.items()):
        path = _csv(tmp_path, f"log{i}.csv", "user,item,ts\n" + "".join(
            f"{u},{it_},{v}\n" for u, it_, v in zip([1, 2, 3, 4], [1, 1, 2, 2], values)))
        assert _read_ts(path) == (INSTANTS, units.get(case, "iso")), case
    assert cases["iso offset"][1] == "2015-05-10T07:09:27+02:00"  # what the test feeds in


def test_date_only_numeric_and_native_timestamps(tmp_path):
    midnights = [1_420_070_400 + d * 86_400 for d in (0, 1, 40, 365)]
    dates = [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d") for t in midnights]
    assert dates[0] == "2015-01-01"
    assert _read_ts(_log(tmp_path, "d.csv", dates)) == (midnights, "iso")
    assert _read_ts(_log(tmp_path, "d.csv", dates), "iso") == (midnights, "iso")
    # numbers in Parquet: int and float seconds, int milliseconds
    assert _read_ts(_log(tmp_path, "s.parquet", INSTANTS)) == (INSTANTS, "s")
    assert _read_ts(_log(tmp_path, "f.parquet", [t + 0.5 for t in INSTANTS])) == (INSTANTS, "s")
    assert _read_ts(_log(tmp_path, "ms.parquet", [t * 1000 for t in INSTANTS])) == (INSTANTS, "ms")
    assert _read_ts(_log(tmp_path, "ms.parquet", [t * 1000 for t in INSTANTS]), "ms") == (INSTANTS, "ms")
    # native datetimes: naive (= UTC), zoned, dates
    ns = [t * 1_000_000_000 + 123 for t in INSTANTS]
    assert _read_ts(_log(tmp_path, "n.parquet", ns, type=pa.timestamp("ns"))) == (INSTANTS, "datetime")
    assert _read_ts(_log(tmp_path, "z.parquet", ns, type=pa.timestamp("ns", "Asia/Tokyo"))) == (INSTANTS, "datetime")
    days = [t // 86_400 for t in midnights]
    assert _read_ts(_log(tmp_path, "d.parquet", days, type=pa.date32())) == (midnights, "datetime")


def test_explicit_unit_not_matching_the_column_is_an_error(tmp_path):
    ints = _log(tmp_path, "ints.csv", [str(t) for t in INSTANTS])
    msg = _error(_read_ts, ints, "iso")
    assert "ints.csv" in msg and "column 'ts', row 1" in msg and "'1420070400'" in msg and "ISO 8601" in msg
    iso = _log(tmp_path, "iso.csv", ["2015-01-01", "2015-01-02", "2015-01-03", "2015-01-04"])
    msg = _error(_read_ts, iso, "s")
    assert "iso.csv: column 'ts', row 1: not a number of epoch seconds (found '2015-01-01')" in msg
    ms = _log(tmp_path, "ms.parquet", [t * 1000 for t in INSTANTS])
    msg = _error(_read_ts, ms, "s")
    assert "row 1" in msg and "1420070400000" in msg and "timestamp_unit ms" in msg
    native = _log(tmp_path, "n.parquet", INSTANTS, type=pa.timestamp("s"))
    assert "row 1" in _error(_read_ts, native, "ms")
    assert "data.timestamp_unit" in _error(_read_ts, ints, "hours")


# -- bad inputs -------------------------------------------------------------------------------

def test_missing_column_names_the_file_the_column_the_param_and_the_columns(tmp_path):
    path = _csv(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,2,3\n")
    msg = _error(it.read_interactions, path, dict(COLS, user="UserID"))
    assert str(path) in msg
    assert "'UserID' (data.columns.user)" in msg and "'rating' (data.columns.rating)" in msg
    assert "['user_id', 'item_id', 'timestamp']" in msg
    msg = _error(it.read_interactions, path, dict(COLS, rating=None, user="User_ID"))
    assert "did you mean 'user_id'?" in msg


def test_empty_and_zero_byte_files_have_no_rows(tmp_path):
    cols = dict(COLS, rating=None)
    header_only = _csv(tmp_path, "header.csv", "user_id,item_id,timestamp\n")
    assert _error(it.read_interactions, header_only, cols).startswith(f"{header_only}: no rows")
    zero = _csv(tmp_path, "zero.tsv", "")
    assert _error(it.read_interactions, zero, cols).startswith(f"{zero}: no rows")
    empty_gz = tmp_path / "empty.csv.gz"
    with gzip.open(empty_gz, "wb"):
        pass
    assert _error(it.read_interactions, empty_gz, cols).startswith(f"{empty_gz}: no rows")
    empty_parquet = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64()),
                             "timestamp": pa.array([], pa.int64())}), empty_parquet)
    assert _error(it.read_interactions, empty_parquet, cols).startswith(f"{empty_parquet}: no rows")


def test_null_user_id_names_the_row(tmp_path):
    path = _csv(tmp_path, "log.csv", "user_id,item_id,rating,timestamp\n1,2,3,10\n2,3,4,11\n,4,5,12\n")
    msg = _error(it.read_interactions, path, COLS)
    assert msg == f"{path}: column 'user_id', row 3: missing user id (found an empty value)"
    pq_path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": [1, None], "rating": [1, 2],
                             "timestamp": [1, 2]}), pq_path)
    assert "column 'item_id', row 2: missing item id" in _error(it.read_interactions, pq_path, COLS)


def test_bad_timestamp_and_rating_values_name_row_and_value(tmp_path):
    path = _csv(tmp_path, "log.csv", "user_id,item_id,rating,timestamp\n"
                "1,2,3,2015-01-01\n1,3,4,yesterday\n1,4,5,2015-01-03\n")
    msg = _error(it.read_interactions, path, COLS)
    assert msg == (f"{path}: column 'timestamp', row 2: not an ISO 8601 date or datetime "
                   f"(found 'yesterday')")
    path = _csv(tmp_path, "cal.csv", "user_id,item_id,rating,timestamp\n1,2,3,2015-01-01\n1,3,4,2015-02-30\n")
    assert "row 2: not a valid date or datetime (found '2015-02-30')" in _error(it.read_interactions, path, COLS)
    path = _csv(tmp_path, "num.csv", "user_id,item_id,rating,timestamp\n1,2,3,100\n1,3,4,1e2\n1,4,5,soon\n")
    assert "row 3: not a number of epoch seconds or milliseconds (found 'soon')" in \
        _error(it.read_interactions, path, COLS)
    path = _csv(tmp_path, "null.csv", "user_id,item_id,rating,timestamp\n1,2,3,100\n1,3,4,\n")
    assert "column 'timestamp', row 2: missing timestamp (found an empty value)" in \
        _error(it.read_interactions, path, COLS)
    path = _csv(tmp_path, "rating.csv", "user_id,item_id,rating,timestamp\n1,2,3,1\n1,3,4.5,2\n1,4,3,3\n1,5,five,4\n")
    assert _error(it.read_interactions, path, COLS) == \
        f"{path}: column 'rating', row 4: not a number (found 'five')"
    path = _csv(tmp_path, "nullrating.csv", "user_id,item_id,rating,timestamp\n1,2,,1\n")
    assert "column 'rating', row 1: missing rating" in _error(it.read_interactions, path, COLS)
    pq_path = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [1, 2], "rating": [1.0, float("nan")],
                             "timestamp": [1, 2]}), pq_path)
    assert "column 'rating', row 2: missing rating (found nan)" in _error(it.read_interactions, pq_path, COLS)


def test_unknown_extension_and_corrupt_files(tmp_path):
    txt = _csv(tmp_path, "log.txt", "user_id,item_id,timestamp\n1,2,3\n")
    msg = _error(it.read_interactions, txt, COLS)
    assert msg.startswith(f"{txt}: unknown file type") and ".csv.gz" in msg and ".parquet" in msg and ".pq" in msg
    assert _error(it.file_format, "x.json").startswith("x.json: unknown file type")
    assert [it.file_format(n) for n in ("a.CSV", "a.csv.gz", "a.tsv", "a.tsv.gz", "a.parquet", "a.pq")] == \
        ["csv", "csv", "tsv", "tsv", "parquet", "parquet"]
    bad_parquet = tmp_path / "log.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not a parquet file at all")
    msg = _error(it.read_interactions, bad_parquet, COLS)
    assert msg.startswith(f"{bad_parquet}: cannot read this parquet file (") and "Parquet" in msg
    bad_gz = _csv(tmp_path, "log.csv.gz", "user_id,item_id,timestamp\n1,2,3\n")  # not gzipped
    assert _error(it.read_interactions, bad_gz, COLS).startswith(f"{bad_gz}: cannot read this csv file (")
    ragged = _csv(tmp_path, "ragged.csv", "user_id,item_id,timestamp\n1,2,3\n4,5,6\n7,8\n")
    msg = _error(it.read_interactions, ragged, dict(COLS, rating=None))
    assert msg.startswith(f"{ragged}: cannot read this csv file (") and "line 4" in msg and "7,8" in msg
    assert _error(it.read_interactions, tmp_path / "absent.csv", COLS) == f"{tmp_path / 'absent.csv'}: no such file"


# -- duplicates -------------------------------------------------------------------------------

DUPLICATED = ("user_id,item_id,rating,timestamp\n"
              "1,10,1,300\n"   # row 1: (1, 10) latest
              "1,10,2,100\n"   # row 2: (1, 10) earliest, tied with row 4
              "2,20,3,50\n"    # row 3: (2, 20) earliest
              "1,10,3,100\n"   # row 4
              "2,20,4,60\n"    # row 5: (2, 20) latest
              "3,30,5,10\n"    # row 6: unique
              "4,40,1,500\n"   # row 7: (4, 40) tied with row 8
              "4,40,2,500\n")  # row 8


@pytest.mark.parametrize("rule, ratings, dropped", [
    ("first", [2.0, 3.0, 5.0, 1.0], {"duplicate (user, item) pairs (rule: first)": 4}),
    ("last", [1.0, 4.0, 5.0, 2.0], {"duplicate (user, item) pairs (rule: last)": 4}),
    ("all", [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 1.0, 2.0], {}),
])
def test_duplicate_rules_keep_the_right_row_in_file_order(tmp_path, rule, ratings, dropped):
    path = _csv(tmp_path, "dup.csv", DUPLICATED)
    got = it.read_interactions(path, COLS, duplicates=rule)
    assert got.rows_read == 8 and got.dropped == dropped
    assert got.frame["rating"].tolist() == ratings
    if rule == "first":
        assert got.frame["timestamp"].tolist() == [100, 50, 10, 500]
        assert got.frame["user_id"].tolist() == [1, 2, 3, 4]
    if rule == "last":
        assert got.frame["timestamp"].tolist() == [300, 60, 10, 500]
    assert got.frame.index.tolist() == list(range(len(ratings)))
    assert "data.duplicates" in _error(it.read_interactions, path, COLS, duplicates="mean")


def test_duplicates_with_string_ids(tmp_path):
    path = _csv(tmp_path, "dup.csv", "u,i,t\na,x,3\nb,x,1\na,x,2\na,y,9\n")
    got = it.read_interactions(path, {"user": "u", "item": "i", "timestamp": "t"})
    assert got.frame["timestamp"].tolist() == [1, 2, 9] and got.dropped == {
        "duplicate (user, item) pairs (rule: first)": 1}


# -- feature tables ---------------------------------------------------------------------------

ITEMS = ("item_id,genres,price,brand,size\n"
         "1,drama| comedy ||,9.5,acme,3\n"
         "2,,NA,,4\n"
         "3,action,,zeta,5\n"
         "99,horror,1,acme,6\n")  # not an interaction item
SPEC = {"genres": {"type": "multi_categorical"}, "price": {"type": "numeric"},
        "brand": {"type": "categorical", "column": None}, "size": {"type": "categorical"},
        "cost": {"type": "numeric", "column": "price", "fit_on": "train"}}


def test_feature_table_types_missing_values_and_unmatched_rows(tmp_path):
    path = _csv(tmp_path, "items.csv", ITEMS)
    frame, sha = it.read_feature_table(path, "item_id", SPEC, ids=np.array([3, 1, 2, 1, 7]))
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert frame.index.name == "id" and frame.index.tolist() == [1, 2, 3] and frame.index.dtype == np.int64
    assert list(frame.columns) == ["genres", "price", "brand", "size", "cost"]
    assert frame["genres"].tolist() == [["drama", "comedy"], [], ["action"]]
    assert frame["price"].dtype == np.float64
    assert frame["price"].iloc[0] == 9.5 and frame["price"].iloc[1:].isna().all()
    assert frame["cost"].iloc[0] == 9.5
    assert frame["brand"].iloc[0] == "acme" and pd.isna(frame["brand"].iloc[1]) and frame["brand"].iloc[2] == "zeta"
    assert frame["size"].dtype == np.int64 and frame["size"].tolist() == [3, 4, 5]
    assert frame.attrs["unmatched_rows"] == 1


def test_feature_table_from_parquet_with_list_and_nullable_int_columns(tmp_path):
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2", "u3"], "tags": [["a", " b "], None, []],
                             "level": pa.array([1, None, 3]), "age": [30.0, None, 41.0]}), path)
    frame, _ = it.read_feature_table(path, "user_id", {"tags": {"type": "multi_categorical"},
                                                      "level": {"type": "categorical"},
                                                      "age": {"type": "numeric"}}, ids=["u3", "u1", "u2"])
    assert frame.index.tolist() == ["u1", "u2", "u3"]
    assert frame["tags"].tolist() == [["a", "b"], [], []]
    assert str(frame["level"].dtype) == "Int64" and frame["level"].tolist()[0] == 1 and pd.isna(frame["level"].iloc[1])
    assert frame["age"].tolist()[0] == 30.0 and np.isnan(frame["age"].iloc[1])
    assert frame.attrs["unmatched_rows"] == 0
    frame.loc["u1", ["level", "age"]] = [2, 31.0]  # writable
    assert frame.loc["u1", "age"] == 31.0


def test_feature_keys_are_converted_to_the_interaction_id_type(tmp_path):
    # str keys, int interaction ids: "7" matches 7; "007" and "x" cannot be ints
    path = _csv(tmp_path, "items.csv", "key,c\n007,a\n7,b\nx,c\n")
    frame, _ = it.read_feature_table(path, "key", {"c": {"type": "categorical"}}, ids=np.array([7, 8]))
    assert frame.index.tolist() == [7] and frame.index.dtype == np.int64
    assert frame["c"].tolist() == ["b"] and frame.attrs["unmatched_rows"] == 2
    # int keys, str interaction ids
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"key": [1, 2, 3], "c": ["a", "b", "c"]}), path)
    frame, _ = it.read_feature_table(path, "key", {"c": {"type": "categorical"}},
                                     ids=pd.Series(["3", "1", "9"]))
    assert frame.index.tolist() == ["1", "3"] and frame["c"].tolist() == ["a", "c"]
    assert frame.attrs["unmatched_rows"] == 1


def test_feature_table_errors(tmp_path):
    path = _csv(tmp_path, "items.csv", ITEMS)
    msg = _error(it.read_feature_table, path, "item", SPEC, ids=[1])
    assert str(path) in msg and "'item' (the key" in msg and "'item_id'" in msg and "'genres'" in msg
    msg = _error(it.read_feature_table, path, "item_id", {"colour": {"type": "categorical"}}, ids=[1])
    assert "'colour' (feature 'colour')" in msg and "'price'" in msg
    assert "needs a type" in _error(it.read_feature_table, path, "item_id", {"price": {"type": "float"}}, ids=[1])

    msg = _error(it.read_feature_table, path, "item_id", SPEC, ids=np.array([50, 51]))
    assert msg == (f"{path}: no value of key column 'item_id' matches an interaction id "
                   f"(first keys: [1, 2, 3, 99]; first interaction ids: [50, 51])")

    dup = _csv(tmp_path, "dup.csv", "k,v\n5,1\n6,2\n5,3\n")
    assert _error(it.read_feature_table, dup, "k", {"v": {"type": "numeric"}}, ids=[5]) == \
        f"{dup}: column 'k', row 3: duplicate key (first at row 1) (found '5')"
    null_key = _csv(tmp_path, "null.csv", "k,v\n5,1\n,2\n")
    assert "column 'k', row 2: missing key" in _error(it.read_feature_table, null_key, "k",
                                                      {"v": {"type": "numeric"}}, ids=[5])
    bad = _csv(tmp_path, "bad.csv", "k,price\n1,2.5\n2,cheap\n")
    assert _error(it.read_feature_table, bad, "k", {"price": {"type": "numeric"}}, ids=[1]) == \
        f"{bad}: column 'price', row 2: not a number (found 'cheap')"


# -- the generator ----------------------------------------------------------------------------

def test_generator_is_deterministic_for_a_seed(tmp_path):
    for ext in ("csv", "csv.gz", "parquet"):
        a = it.write_synthetic_log(tmp_path / f"a.{ext}", 80, 60, 1500, seed=5, string_ids=True,
                                   item_features_path=tmp_path / f"ia.{ext}")
        b = it.write_synthetic_log(tmp_path / f"b.{ext}", 80, 60, 1500, seed=5, string_ids=True,
                                   item_features_path=tmp_path / f"ib.{ext}")
        assert a.read_bytes() == b.read_bytes(), ext
        assert (tmp_path / f"ia.{ext}").read_bytes() == (tmp_path / f"ib.{ext}").read_bytes(), ext
    c = it.write_synthetic_log(tmp_path / "c.csv", 80, 60, 1500, seed=6, string_ids=True)
    assert c.read_bytes() != (tmp_path / "a.csv").read_bytes()
    # the feature tables draw from their own streams: the log does not depend on them
    d = it.write_synthetic_log(tmp_path / "d.csv", 80, 60, 1500, seed=5, string_ids=True)
    assert d.read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_generator_shape(tmp_path):
    n_users, n_items, n = 1000, 2000, 20_000
    path = it.write_synthetic_log(tmp_path / "log.csv", n_users, n_items, n, seed=1,
                                  item_features_path=tmp_path / "items.csv",
                                  user_features_path=tmp_path / "users.parquet")
    assert path.read_text().splitlines()[0] == "user_id,item_id,rating,timestamp"
    got = it.read_interactions(path, COLS)
    frame = it.read_interactions(path, COLS, duplicates="all").frame
    assert got.rows_read == n and len(frame) == n
    dup_share = sum(got.dropped.values()) / n
    assert 0 < dup_share < 0.02  # repeats exist, as in real logs, but few
    assert frame["user_id"].nunique() == n_users and frame["item_id"].between(1, n_items).all()
    assert set(frame["rating"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    start = 1_420_070_400
    assert frame["timestamp"].min() >= start and frame["timestamp"].max() < start + 3 * 366 * 86_400
    # heavy tails: the top 1% of items hold many times their uniform share, and users' activity is skewed
    items = frame["item_id"].value_counts()
    assert items.iloc[: n_items // 100].sum() / n > 0.06
    users = frame["user_id"].value_counts()
    assert users.max() > 10 * users.median()
    # rows grouped by user, in time order within each
    assert frame["user_id"].is_monotonic_increasing
    assert (frame.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()

    item_features, _ = it.read_feature_table(tmp_path / "items.csv", "item_id",
                                             {"genres": {"type": "multi_categorical"}, "price": {"type": "numeric"}},
                                             ids=frame["item_id"].unique())
    assert item_features.index.isin(frame["item_id"]).all()
    tokens = {g for gs in item_features["genres"] for g in gs}
    assert tokens <= set(it.SYNTHETIC_GENRES) and len(tokens) == 15
    assert all(len(gs) >= 1 for gs in item_features["genres"])
    assert 0.02 < item_features["price"].isna().mean() < 0.08 and (item_features["price"].dropna() > 0).all()
    users_f, _ = it.read_feature_table(tmp_path / "users.parquet", "user_id",
                                       {"country": {"type": "categorical"}, "age": {"type": "numeric"}},
                                       ids=frame["user_id"].unique())
    assert len(users_f) == n_users and users_f.attrs["unmatched_rows"] == 0
    assert set(users_f["country"]) == set(it.SYNTHETIC_COUNTRIES)
    assert 0.01 < users_f["age"].isna().mean() < 0.06


def test_generator_string_ids_and_no_rating(tmp_path):
    path = it.write_synthetic_log(tmp_path / "log.tsv", 30, 20, 300, seed=2, string_ids=True, with_rating=False,
                                  user_features_path=tmp_path / "users.tsv.gz")
    assert path.read_text().splitlines()[0] == "user_id\titem_id\ttimestamp"
    got = it.read_interactions(path, dict(COLS, rating=None), duplicates="all")
    assert got.rows_read == 300 and not got.has_rating and (got.frame["rating"] == 1.0).all()
    assert got.frame["user_id"].str.fullmatch(r"u\d{6}").all()
    assert got.frame["item_id"].str.fullmatch(r"sku\d{5}").all()
    users, _ = it.read_feature_table(tmp_path / "users.tsv.gz", "user_id", {"age": {"type": "numeric"}},
                                     ids=got.frame["user_id"].unique())
    assert users.index[0] == "u000001" and len(users) == got.frame["user_id"].nunique() == 30


def test_planted_taste_structure_is_learnable(tmp_path):
    """Holding out each user's last interaction, item-item co-occurrence (cosine) finds it
    in the top 10 far more often than popularity does: the clusters are learnable."""
    n_items = 300
    path = it.write_synthetic_log(tmp_path / "log.parquet", 400, n_items, 12_000, seed=4)
    frame = it.read_interactions(path, COLS).frame
    last = frame.groupby("user_id")["timestamp"].transform("max") == frame["timestamp"]
    test = frame[last].drop_duplicates("user_id")
    train = frame.drop(test.index)
    users = np.sort(frame["user_id"].unique())
    seen = np.zeros((len(users), n_items))
    seen[np.searchsorted(users, train["user_id"]), train["item_id"] - 1] = 1
    unit = seen / np.maximum(np.linalg.norm(seen, axis=0, keepdims=True), 1e-9)
    similar = unit.T @ unit
    np.fill_diagonal(similar, 0)
    rows, target = np.searchsorted(users, test["user_id"]), test["item_id"].to_numpy() - 1

    def hit_rate(scores):
        scores = np.where(seen > 0, -np.inf, scores)[rows]
        return (np.argsort(-scores, axis=1, kind="stable")[:, :10] == target[:, None]).any(axis=1).mean()

    popularity = hit_rate(np.broadcast_to(seen.sum(axis=0), seen.shape))
    knn = hit_rate(seen @ similar)
    assert knn > 2 * popularity and knn > 0.2, (knn, popularity)
