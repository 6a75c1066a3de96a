"""The feature schema: specs, encoding, standardisation on the training rows, the towers built from it."""
import numpy as np
import pandas as pd
import pytest
import torch

from lib.core.params import ParamsError
from lib.movielens import features
from lib.movielens.features import MISSING_TOKEN, dense_inputs, encode, normalise_schema, normalise_spec
from lib.movielens.towers import ItemTower, UserTower

MODEL = {"user_features": True, "item_features": True, "id_embeddings": False, "history": "none",
         "feature_dim": 4, "id_dim": 4, "hidden": [8], "embedding_dim": 6, "dropout": 0.0}


def test_spec_shorthand_and_defaults():
    assert normalise_spec("f", "numeric") == {"type": "numeric", "column": None, "fit_on": "train", "missing": "flag"}
    assert normalise_spec("f", {"type": "multi_categorical"})["sep"] == "|"


@pytest.mark.parametrize("spec, message", [
    ("numerc", "unknown feature type 'numerc' (did you mean 'numeric'?)"),
    ({"type": "numeric", "fit": "train"}, "data.item_features.columns.price: unknown key 'fit' for a numeric feature (did you mean 'fit_on'?)"),
    ({"type": "numeric", "fit_on": "test"}, "fit_on: 'train'"),
    ({"type": "multi_categorical", "sep": ""}, "sep: a non-empty separator"),
    ({"type": "categorical", "vocabulary": ["a", "a"]}, "vocabulary: a non-empty list of distinct values"),
    (3, "a feature is a type"),
])
def test_bad_spec_is_named(spec, message):
    with pytest.raises(ParamsError) as err:
        normalise_schema("data.item_features.columns", {"price": spec})
    assert message in str(err.value)


def test_encode_codes_tokens_values_and_missing():
    table = pd.DataFrame({"country": ["fr", "de", None], "tags": [["a", "b"], [], ["b", "zz"]],
                          "price": [1.0, np.nan, 3.0]}, index=pd.Index([10, 20, 30], name="id"))
    schema = normalise_schema("x", {"country": "categorical", "tags": {"type": "multi_categorical"}, "price": "numeric"})
    # id 40 has no row in the table: all its features are missing
    country, tags, price = encode(table, np.array([10, 20, 30, 40]), schema)
    assert country.vocabulary == ["de", "fr", MISSING_TOKEN]
    assert country.codes.tolist() == [1, 0, 2, 2] and country.missing == 2
    assert tags.vocabulary == ["a", "b", "zz"]
    assert tags.tokens.toarray().tolist() == [[1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 0]] and tags.missing == 2
    np.testing.assert_array_equal(price.values, np.array([1.0, np.nan, 3.0, np.nan], np.float32))


def test_declared_vocabulary_keeps_order_and_unknown_values_are_missing():
    schema = normalise_schema("x", {"g": {"type": "categorical", "vocabulary": ["z", "y"]}})
    (g,) = encode(pd.DataFrame({"g": ["y", "q"]}, index=[1, 2]), np.array([1, 2]), schema)
    assert g.vocabulary == ["z", "y", MISSING_TOKEN] and g.codes.tolist() == [1, 2]


def test_numeric_is_standardised_on_the_training_rows_with_a_missing_flag():
    schema = normalise_schema("x", {"p": "numeric"})
    (p,) = encode(pd.DataFrame({"p": [1.0, 3.0, np.nan, 100.0]}, index=[0, 1, 2, 3]), np.arange(4), schema)
    fit = np.array([True, True, True, False])  # the row with 100 was never in training
    dense = dense_inputs([p], fit)
    # the missing value gets the training mean (2), then the training rows 1, 3, 2 set the scale
    # (std sqrt(2/3)); the row outside training does not move the statistics
    sd = np.sqrt(2 / 3)
    np.testing.assert_allclose(dense[:, 0], [-1 / sd, 1 / sd, 0.0, 98 / sd], rtol=1e-5)
    assert dense[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0]
    catalog = dense_inputs(encode(pd.DataFrame({"p": [1.0, 3.0]}, index=[0, 1]), np.arange(2),
                                  normalise_schema("x", {"p": {"type": "numeric", "fit_on": "catalog",
                                                               "missing": "mean"}})), np.array([True, False]))
    assert catalog.shape == (2, 1)  # no flag: nothing missing, and 'mean' asks for none


def _features(n: int, rng, big_vocab: bool):
    vocab = [f"t{i}" for i in range(features.MULTI_HOT_MAX + 10 if big_vocab else 5)]
    table = pd.DataFrame({
        "c": rng.choice(["a", "b", "c"], n),
        "m": [list(rng.choice(vocab, rng.integers(0, 3), replace=False)) for _ in range(n)],
        "x": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
    }, index=np.arange(n))
    schema = normalise_schema("x", {"c": "categorical", "m": {"type": "multi_categorical", "vocabulary": vocab},
                                    "x": "numeric"})
    return encode(table, np.arange(n), schema)


@pytest.mark.parametrize("big_vocab", [False, True])
def test_towers_built_from_the_schema(big_vocab):
    rng = np.random.default_rng(0)
    user_f, item_f = _features(30, rng, big_vocab), _features(20, rng, big_vocab)
    torch.manual_seed(0)
    user = UserTower(30, 20, user_f, np.ones(30, bool), MODEL)
    item = ItemTower(20, item_f, np.ones(20, bool), MODEL)
    # categorical: one embedding; multi-categorical: multi-hot columns, or a bag of embeddings above the bound
    n_dense = (0 if big_vocab else 5) + 2  # (tokens) + numeric + its missing flag
    assert user.features.dim == 4 * (2 if big_vocab else 1) + n_dense
    assert [type(b).__name__ for b in user.features.bags] == (["EmbeddingBag"] if big_vocab else [])
    assert not user.grouped and not item.grouped  # numeric features: no grouping by codes
    u = user(torch.arange(30))
    v = item()
    assert u.shape == (30, 6) and v.shape == (20, 6)
    np.testing.assert_allclose(u.norm(dim=1).detach().numpy(), 1.0, rtol=1e-5)
    # an item's embedding depends on its features: items with equal inputs are equal, others differ
    assert not torch.allclose(v[0], v[1])
    # the bag of an item with no token is a zero vector, so its input is well defined
    if big_vocab:
        empty = int(np.flatnonzero(np.diff(item_f[1].tokens.indptr) == 0)[0])
        assert torch.equal(item.features._bag(0, torch.tensor([empty])), torch.zeros(1, 4))
        some = int(np.flatnonzero(np.diff(item_f[1].tokens.indptr) > 0)[0])
        toks = item_f[1].tokens[some].indices
        want = item.features.bags[0].weight[torch.as_tensor(toks)].mean(0)
        torch.testing.assert_close(item.features._bag(0, torch.tensor([some]))[0], want)


def test_no_features_and_no_ids_is_a_clear_error():
    with pytest.raises(ValueError, match="set model.id_embeddings: true"):
        ItemTower(5, [], np.ones(5, bool), MODEL)
    tower = ItemTower(5, [], np.ones(5, bool), dict(MODEL, id_embeddings=True))
    assert tower().shape == (5, 6)


def test_categorical_users_are_grouped_by_their_codes():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"a": rng.choice(["x", "y"], 40), "b": rng.choice(["p", "q", "r"], 40)}, index=np.arange(40))
    feats = encode(table, np.arange(40), normalise_schema("s", {"a": "categorical", "b": "categorical"}))
    torch.manual_seed(0)
    tower = UserTower(40, 10, feats, np.ones(40, bool), MODEL).eval()
    assert tower.grouped
    rows, inverse = tower.forward_grouped(torch.arange(40))
    assert len(rows) == len(table.drop_duplicates())
    torch.testing.assert_close(rows[inverse], tower._features_forward(torch.arange(40)))
