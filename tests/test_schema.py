"""The params schema (lib/<study>/schema.py): declared once, it gives the defaults, the
checks and their messages, and what `--schema` prints."""
import json
import subprocess
import sys

import pytest

from lib.core import studies
from lib.core.params import ParamsError
from lib.core.runs import ROOT, configure
from lib.core.schema import check, message


@pytest.mark.parametrize("study", studies.STUDIES)
def test_the_defaults_are_the_schema_and_pass_it(study):
    steps = studies.steps(study)
    assert steps.DEFAULTS == steps.SCHEMA().model_dump()
    check(steps.SCHEMA, steps.DEFAULTS)  # the defaults are a valid run


@pytest.mark.parametrize("study, sections, text", [
    ("movielens", {"train": {"learning_rate": 0}}, "train.learning_rate must be > 0, got 0"),
    ("movielens", {"model": {"dropout": 1.0}}, "model.dropout must be < 1, got 1.0"),
    ("movielens", {"model": {"hidden": [64, 0]}}, "model.hidden must be >= 1, got 0"),
    ("movielens", {"model": {"history": "last"}}, "model.history: unknown 'last'; known: 'none', 'mean' or 'recency'"),
    ("movielens", {"evaluate": {"splits": ["test", "train"]}}, "evaluate.splits: unknown 'train'; known: 'val' or 'test'"),
    ("movielens", {"data": {"dataset": "interactions", "path": "a.csv",
                            "item_features": {"path": "i.csv", "key": "sku", "colums": {}}}},
     "unknown params key 'data.item_features.colums' (did you mean 'columns'?)"),
    ("movielens", {"data": {"dataset": "interactions", "path": "a.csv", "item_features": {"path": "i.csv"}}},
     "data.item_features.key is required"),
    ("movielens", {"train": {"batching": "users"}}, "train.batching: users needs loss.kind: full_softmax"),
    ("wikiseq", {"evaluate": {"cutoffs": [100, 10]}}, "evaluate.cutoffs must be strictly increasing"),
    ("wikiseq", {"model": {"decay": 1.5}}, "model.decay must be <= 1, got 1.5"),
    ("wikiseq", {"data": {"source": "npz"}}, "data.path is required for source npz"),
])
def test_a_broken_rule_names_the_key_the_rule_and_the_value(study, sections, text):
    with pytest.raises(ParamsError) as err:
        configure(study=study, **sections)
    assert str(err.value) == text or str(err.value).startswith(text)


def test_messages_for_types_and_bounds():
    assert message({"type": "int_type", "loc": ("train", "patience"), "input": 2.5}) == \
        "params key 'train.patience' must be of type int, got 2.5"
    assert message({"type": "greater_than_equal", "loc": ("a", "b"), "input": 0, "ctx": {"ge": 1.0}}) == \
        "a.b must be >= 1, got 0"


def test_schema_flag_prints_every_key_with_its_default_and_range():
    out = subprocess.run([sys.executable, "-m", "lib.run", "--schema", "movielens"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    schema = json.loads(out)["$defs"]
    lr = schema["Train"]["properties"]["learning_rate"]
    assert lr["default"] == 0.001 and lr["exclusiveMinimum"] == 0
    assert set(schema["Evaluate"]["properties"]) == set(studies.steps("movielens").DEFAULTS["evaluate"])
    assert schema["Loss"]["properties"]["kind"]["enum"] == ["in_batch", "explicit", "mixed", "full_softmax"]
