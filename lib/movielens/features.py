"""Side features of users and items: the schema declared in params, and its encoding.

A feature is ``categorical`` (one value per user or item: an embedding), ``multi_categorical``
(a set of tokens, e.g. genres: a multi-hot vector, or a mean of token embeddings when the
vocabulary is larger than ``MULTI_HOT_MAX``) or ``numeric`` (standardised; a missing value
becomes the mean plus a missing flag). MovieLens is one configuration of this schema
(``lib.movielens.data.MOVIELENS_FEATURES``); the towers know features only through it.

Encoding happens in two places: ``encode`` turns a table of raw values into codes and
token matrices once, when the data is prepared (stored with the prepared data);
``dense_inputs`` standardises numeric features when a model is built, on the rows its
spec says (``fit_on: train``, the default: users or items seen in the training split only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core.params import ParamsError, _suggest

FEATURE_TYPES = ("categorical", "multi_categorical", "numeric")
SPEC_KEYS = {
    "categorical": {"type", "column", "vocabulary"},
    "multi_categorical": {"type", "column", "sep", "vocabulary"},
    "numeric": {"type", "column", "fit_on", "missing"},
}
MULTI_HOT_MAX = 256   # larger token vocabularies: a bag of embeddings instead of a multi-hot vector
MISSING_TOKEN = "<missing>"


def normalise_spec(where: str, spec) -> dict:
    """A feature's spec in full form (``categorical`` alone means ``{type: categorical}``);
    an unknown type or key, or an impossible value, is a ``ParamsError`` naming ``where``."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ParamsError(f"{where}: a feature is a type ({', '.join(FEATURE_TYPES)}) or a mapping with "
                          f"'type', got {spec!r}")
    kind = spec["type"]
    if kind not in FEATURE_TYPES:
        raise ParamsError(f"{where}.type: unknown feature type {kind!r}{_suggest(str(kind), FEATURE_TYPES)}; "
                          f"known: {list(FEATURE_TYPES)}")
    unknown = set(spec) - SPEC_KEYS[kind]
    if unknown:
        key = sorted(unknown)[0]
        raise ParamsError(f"{where}: unknown key '{key}' for a {kind} feature{_suggest(key, SPEC_KEYS[kind])}; "
                          f"allowed: {sorted(SPEC_KEYS[kind])}")
    out = {"type": kind, "column": spec.get("column")}
    if out["column"] is not None and not isinstance(out["column"], str):
        raise ParamsError(f"{where}.column: a column name, got {out['column']!r}")
    if kind == "multi_categorical":
        out["sep"] = spec.get("sep", "|")
        if not isinstance(out["sep"], str) or not out["sep"]:
            raise ParamsError(f"{where}.sep: a non-empty separator string, got {out['sep']!r}")
    if kind in ("categorical", "multi_categorical"):
        vocab = spec.get("vocabulary")
        if vocab is not None and (not isinstance(vocab, list) or not vocab or len(set(map(str, vocab))) != len(vocab)):
            raise ParamsError(f"{where}.vocabulary: a non-empty list of distinct values, got {vocab!r}")
        out["vocabulary"] = vocab
    if kind == "numeric":
        out["fit_on"] = spec.get("fit_on", "train")
        out["missing"] = spec.get("missing", "flag")
        if out["fit_on"] not in ("train", "catalog"):
            raise ParamsError(f"{where}.fit_on: 'train' (users or items of the training split) or 'catalog' "
                              f"(every row of the prepared data), got {out['fit_on']!r}")
        if out["missing"] not in ("flag", "mean"):
            raise ParamsError(f"{where}.missing: 'flag' (mean plus a missing flag) or 'mean', got {out['missing']!r}")
    return out


def normalise_schema(where: str, columns) -> dict[str, dict]:
    """``{feature name: spec}`` in full form (see ``normalise_spec``)."""
    if columns is None:
        return {}
    if not isinstance(columns, dict):
        raise ParamsError(f"{where}: a mapping of feature name -> type, got {columns!r}")
    return {str(name): normalise_spec(f"{where}.{name}", spec) for name, spec in columns.items()}


@dataclass
class Feature:
    """One encoded feature over the prepared users or items (dense index order)."""
    name: str
    spec: dict
    codes: np.ndarray | None = None      # categorical: (n,) int64 in [0, len(vocabulary))
    tokens: sp.csr_matrix | None = None  # multi_categorical: (n, len(vocabulary)) 0/1 float32
    values: np.ndarray | None = None     # numeric: (n,) float32, NaN where missing
    vocabulary: list | None = None       # categorical / multi_categorical; MISSING_TOKEN last if any

    @property
    def kind(self) -> str:
        return self.spec["type"]

    @property
    def missing(self) -> int:
        """How many rows have no value."""
        if self.kind == "numeric":
            return int(np.isnan(self.values).sum())
        if self.kind == "categorical":
            return int((self.codes == self.vocabulary.index(MISSING_TOKEN)).sum()) if MISSING_TOKEN in self.vocabulary else 0
        return int((np.diff(self.tokens.indptr) == 0).sum())

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        if self.kind == "categorical":
            return {f"{prefix}{self.name}/codes": self.codes}
        if self.kind == "numeric":
            return {f"{prefix}{self.name}/values": self.values}
        t = self.tokens
        return {f"{prefix}{self.name}/indptr": t.indptr, f"{prefix}{self.name}/indices": t.indices}

    def describe(self) -> dict:
        """What meta.json keeps (with the arrays, enough to rebuild the feature)."""
        return {"name": self.name, "spec": self.spec, "vocabulary": self.vocabulary}

    @classmethod
    def from_arrays(cls, desc: dict, z, prefix: str, n: int) -> "Feature":
        f = cls(desc["name"], desc["spec"], vocabulary=desc["vocabulary"])
        key = f"{prefix}{f.name}"
        if f.kind == "categorical":
            f.codes = z[f"{key}/codes"]
        elif f.kind == "numeric":
            f.values = z[f"{key}/values"]
        else:
            indices = z[f"{key}/indices"]
            f.tokens = sp.csr_matrix((np.ones(len(indices), np.float32), indices, z[f"{key}/indptr"]),
                                     shape=(n, len(f.vocabulary)))
        return f


def _sorted_values(values: pd.Series) -> list:
    distinct = pd.unique(values.dropna())
    try:
        return sorted(distinct.tolist())
    except TypeError:  # mixed types
        return sorted(map(str, distinct))


def encode(table: pd.DataFrame | None, ids: np.ndarray, schema: dict[str, dict]) -> list[Feature]:
    """Encode the raw feature values of ``table`` (indexed by original id, one column per
    feature name; rows of ids not in it are missing) for the entities ``ids`` (dense order).
    A vocabulary is the spec's, else the sorted distinct values; a missing value, or one
    outside a declared vocabulary, gets the code of ``MISSING_TOKEN``."""
    features = []
    rows = table.reindex(ids) if table is not None else pd.DataFrame(index=ids)
    for name, spec in schema.items():
        col = rows[name] if name in rows else pd.Series([None] * len(ids), dtype=object)
        if spec["type"] == "numeric":
            features.append(Feature(name, spec, values=pd.to_numeric(col).to_numpy(np.float32)))
        elif spec["type"] == "categorical":
            vocab = list(spec["vocabulary"]) if spec["vocabulary"] is not None else _sorted_values(col)
            codes = pd.Categorical(col.where(col.isin(vocab)), categories=vocab).codes.astype(np.int64)
            if (codes < 0).any():
                vocab.append(MISSING_TOKEN)
                codes[codes < 0] = len(vocab) - 1
            features.append(Feature(name, spec, codes=codes, vocabulary=vocab))
        else:
            lists = col.map(lambda v: v if isinstance(v, (list, tuple, np.ndarray)) else [])
            flat = pd.Series([t for ts in lists for t in ts], dtype=object)
            vocab = list(spec["vocabulary"]) if spec["vocabulary"] is not None else _sorted_values(flat)
            index = {v: i for i, v in enumerate(vocab)}
            lengths = lists.map(len).to_numpy()
            cols = flat.map(index).to_numpy()
            row = np.repeat(np.arange(len(ids)), lengths)
            known = ~pd.isna(cols)
            tokens = sp.csr_matrix((np.ones(known.sum(), np.float32), (row[known], cols[known].astype(np.int64))),
                                   shape=(len(ids), len(vocab)))
            tokens.sum_duplicates()
            tokens.data[:] = 1.0
            features.append(Feature(name, spec, tokens=tokens, vocabulary=vocab))
    return features


def standardised(values: np.ndarray, fit: np.ndarray | None) -> np.ndarray:
    """A numeric feature with missing values set to the mean and standardised, the
    statistics taken over the rows ``fit`` (a boolean mask; None: every row)."""
    ref = values if fit is None else values[fit]
    fill = np.nanmean(ref) if np.isfinite(ref).any() else 0.0
    y = np.nan_to_num(values, nan=fill)
    ref = y if fit is None else y[fit]
    return (y - ref.mean()) / (ref.std() + 1e-6)


def multi_hot(feature: Feature) -> bool:
    """Whether a multi-categorical feature enters a tower as a multi-hot vector (else as a
    bag of token embeddings)."""
    return feature.kind == "multi_categorical" and len(feature.vocabulary) <= MULTI_HOT_MAX


def dense_inputs(features: list[Feature], fit: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """The dense part of a tower's input, (n, d) float32: multi-hot features, then ``extra``
    columns (the item tower's popularity features), then each numeric feature standardised
    (and its missing flag), all in declared order. ``fit``: rows seen in the training split."""
    parts = [f.tokens.toarray() for f in features if multi_hot(f)]
    if extra is not None:
        parts.append(extra)
    for f in features:
        if f.kind != "numeric":
            continue
        parts.append(standardised(f.values, None if f.spec["fit_on"] == "catalog" else fit)[:, None])
        if f.spec["missing"] == "flag" and np.isnan(f.values).any():
            parts.append(np.isnan(f.values).astype(np.float32)[:, None])
    n = len(fit)
    if not parts:
        return np.zeros((n, 0), np.float32)
    return np.concatenate([p.astype(np.float32, copy=False) for p in parts], axis=1)
