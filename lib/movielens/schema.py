"""The evaluation study's params, declared once (``lib.core.schema``): each section's keys
with type, default, range and allowed values, and the rules between keys. ``steps.DEFAULTS``
is ``defaults(RunParams)``; ``steps.validate`` is ``check(RunParams, cfg)``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..core.files import DataError
from ..core.metrics import KS
from ..core.params import ParamsError
from ..core.schema import Section
from . import baselines
from .data import date_seconds
from .features import normalise_schema
from .interactions import file_format

MOVIELENS_DATASETS = ("ml-1m", "ml-100k", "synthetic")
DATASETS = (*MOVIELENS_DATASETS, "interactions")
MODEL_KINDS = ("two_tower", *baselines.BASELINES)
PositiveInt = Annotated[int, Field(ge=1)]


class Synthetic(Section):
    """Generated data in the ML-1M format (tests, smoke runs)."""
    n_users: PositiveInt = 300
    n_items: PositiveInt = 200
    n_ratings: PositiveInt = 12000

    @model_validator(mode="after")
    def _fits(self):
        if self.n_ratings > 0.8 * self.n_users * self.n_items:  # more would never finish drawing distinct pairs
            raise ParamsError(f"data.synthetic.n_ratings must be at most 80% of n_users x n_items "
                              f"({self.n_users} x {self.n_items}), got {self.n_ratings}")
        return self


class Columns(Section):
    """The log's column names (``dataset: interactions``)."""
    user: Annotated[str, Field(min_length=1)] = "user_id"
    item: Annotated[str, Field(min_length=1)] = "item_id"
    timestamp: Annotated[str, Field(min_length=1)] = "timestamp"
    rating: str | None = "rating"            # null: a log without ratings


class FeatureTable(Section):
    """A side table: its file, the column holding the id, and its features' schema."""
    path: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1)]
    columns: dict[str, Any]   # checked by Data (which knows the table's dotted name)


class Data(Section):
    dataset: Literal[DATASETS] = "ml-1m"    # interactions: your log (columns, *_features)
    path: str | None = None                 # MovieLens: folder or zip, else $TWOTOWER_DATA_ROOT/<dataset>,
                                            # else download; interactions: the log (CSV, TSV, Parquet; .gz)
    verify_checksums: bool = True           # MovieLens: the official files' sha256
    min_count: PositiveInt = 5              # k-core on users and items, repeated until stable
    split: list[float] = [0.8, 0.1, 0.1]    # global time split fractions (the reference protocol)
    split_dates: list[str] | None = None    # [val_start, test_start] ISO dates: a global split at cut-off dates
    leave_last: PositiveInt | None = None   # N: per-user leave-last-N (last N to test, N before to val)
    test_min_rating: int = 4                # ground truth = held-out ratings >= this (no ratings: every one)
    synthetic: Synthetic = Synthetic()
    # interactions only: the log's column names, timestamp unit, the rule for repeated pairs, side tables
    columns: Columns = Columns()
    timestamp_unit: Literal["auto", "s", "ms", "iso"] = "auto"  # auto: epoch s or ms by magnitude, ISO text
    duplicates: Literal["first", "last", "all"] = "first"      # a (user, item) pair given more than once
    user_features: FeatureTable | None = None  # {path, key, columns: {name: categorical | numeric | {type: ...}}}
    item_features: FeatureTable | None = None  # the same for items (multi_categorical: {type: ..., sep: "|"})

    @field_validator("split")
    @classmethod
    def _fractions(cls, split):
        if not (len(split) == 3 and all(0 < f < 1 for f in split) and abs(sum(split) - 1) < 1e-9):
            raise ParamsError(f"data.split must be three fractions in (0, 1) summing to 1, got {split}")
        return split

    @model_validator(mode="after")
    def _protocol_and_source(self):
        if self.split_dates is not None and self.leave_last is not None:
            raise ParamsError("data.split_dates and data.leave_last are two protocols: set one "
                              "(or neither, for data.split)")
        if self.split_dates is not None:
            dates = self.split_dates
            if len(dates) != 2:
                raise ParamsError(f"data.split_dates: [validation start, test start] as ISO dates, e.g. "
                                  f"['2000-11-01', '2000-12-01'], got {dates!r}")
            try:
                seconds = [date_seconds(x) for x in dates]
            except ValueError as exc:
                raise ParamsError(f"data.split_dates: not an ISO date ({exc})") from exc
            if seconds[0] >= seconds[1]:
                raise ParamsError(f"data.split_dates: the validation start must come before the test start, "
                                  f"got {dates}")
        for side in ("user", "item"):
            table = getattr(self, f"{side}_features")
            if table is not None:
                if not table.columns:
                    raise ParamsError(f"data.{side}_features.columns: at least one feature")
                normalise_schema(f"data.{side}_features.columns", table.columns)  # each feature's type and keys
        if self.dataset == "interactions":
            # Files are named here and opened when the data is prepared (a missing one is a
            # DataError naming it then): a params file checks before its data exists (the example's).
            if not self.path:
                raise ParamsError("data.path: the interactions file (CSV, TSV or Parquet)")
            try:
                file_format(self.path)
            except DataError as exc:
                raise ParamsError(f"data.path: {exc}") from exc
        else:
            if not 1 <= self.test_min_rating <= 5:
                raise ParamsError("data.test_min_rating must be in 1..5")
            given = [k for k in ("columns", "timestamp_unit", "duplicates", "user_features", "item_features")
                     if getattr(self, k) != Data.model_fields[k].default]
            if given:
                raise ParamsError(f"data.{given[0]} applies to data.dataset: interactions only (this run reads "
                                  f"{self.dataset}, whose columns and features are fixed)")
        return self


class Model(Section):
    kind: Literal[MODEL_KINDS] = "two_tower"
    # the two-tower's towers: mlp (features / IDs / pooled history through an MLP), linear
    # (pooled history embeddings . item embeddings + item bias), sasrec or gru4rec (an encoder
    # of the time-ordered history, sharing the item embeddings; train.batching: sequences)
    architecture: Literal["mlp", "linear", "sasrec", "gru4rec"] = "mlp"
    max_sequence_length: Annotated[int, Field(ge=2)] = 50   # sasrec/gru4rec: the last N items read
    attention_blocks: PositiveInt = 2
    attention_heads: PositiveInt = 1
    params: dict[str, Any] = {}               # a baseline's hyperparameters (checked by its constructor)
    select_on_validation: dict[str, Any] = {}  # hyperparameter -> candidates, chosen on validation NDCG@10
    embedding_dim: PositiveInt = 128
    hidden: list[Annotated[int, Field(ge=1)]] = [256, 128]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    feature_dim: PositiveInt = 16
    id_dim: PositiveInt = 32
    user_features: bool = True
    item_features: bool = True
    id_embeddings: bool = False
    history: Literal["none", "mean", "recency"] = "none"
    history_half_life_days: Annotated[float, Field(gt=0)] = 30.0
    item_popularity: bool = False             # the item tower also sees training-period popularity
    popularity_window_days: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _consistent(self):
        if self.item_popularity and not self.item_features:
            raise ParamsError("model.item_popularity needs model.item_features (popularity is an item feature)")
        if self.kind == "two_tower":
            if self.architecture == "linear" and self.history == "none":
                raise ParamsError("model.architecture: linear pools the user's history: set model.history "
                                  "to mean or recency")
            if self.architecture in ("sasrec", "gru4rec") and self.history != "none":
                raise ParamsError(f"model.architecture: {self.architecture} reads the time-ordered history "
                                  f"itself; model.history (pooling) applies to mlp and linear only")
            if self.architecture == "sasrec" and self.embedding_dim % self.attention_heads:
                raise ParamsError(f"model.embedding_dim ({self.embedding_dim}) must be a multiple of "
                                  f"model.attention_heads ({self.attention_heads})")
            if self.params or self.select_on_validation:
                raise ParamsError("model.params and model.select_on_validation are a baseline's hyperparameters; a "
                                  "two-tower takes model.embedding_dim, model.hidden, ... (they would be ignored)")
            return self
        cls = baselines.BASELINES[self.kind]
        try:
            cls(**self.params)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"model.params for '{self.kind}': {exc}") from exc
        for key, candidates in self.select_on_validation.items():
            if not isinstance(candidates, list) or not candidates:
                raise ParamsError(f"model.select_on_validation.{key}: a non-empty list")
            for value in candidates:
                try:
                    cls(**{**self.params, key: value})
                except (TypeError, ValueError) as exc:
                    raise ParamsError(f"model.select_on_validation.{key} = {value!r} for '{self.kind}': {exc}") from exc
        return self


class Loss(Section):
    kind: Literal["in_batch", "explicit", "mixed", "full_softmax"] = "mixed"
    temperature: Annotated[float, Field(gt=0)] = 0.05
    num_negatives: PositiveInt = 16
    explicit_weight: Annotated[float, Field(ge=0, le=1)] = 0.7
    logq_correction: bool = False
    remove_accidental_hits: bool = False
    num_hard_negatives: Annotated[int, Field(ge=0)] = 0
    hard_negative_pool: PositiveInt = 100
    # recent training interactions weigh more in the loss: weight 0.5 ** (age / half-life), age =
    # days from the interaction to the end of the training period (null: every one weighs 1)
    half_life_days: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _pool(self):
        if self.hard_negative_pool < self.num_hard_negatives:
            raise ParamsError("loss.num_hard_negatives >= 0 and hard_negative_pool >= num_hard_negatives")
        return self


class Train(Section):
    batch_size: Annotated[int, Field(ge=2)] = 1024
    learning_rate: Annotated[float, Field(gt=0)] = 0.001
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    max_epochs: PositiveInt = 50
    patience: PositiveInt = 5
    positive_min_rating: int = 0
    min_delta: Annotated[float, Field(ge=0)] = 0.0   # an epoch is better only if it beats the best by more
    early_stopping_metric: Literal["val_loss", "val_ndcg@10", "val_recall@10"] = "val_loss"
    # users: all of a user's targets per row; sequences: each user's time-ordered history,
    # the next item predicted at every position (model.architecture sasrec / gru4rec)
    batching: Literal["interactions", "users", "sequences"] = "interactions"
    user_batch_size: PositiveInt = 128
    target_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2    # users batching: history held out as targets
    target_selection: Literal["random", "latest"] = "random"       # random: re-drawn each epoch; latest: newest
    next_items: PositiveInt = 1   # sequences: the following items each position predicts (1: the next one)
    threads: PositiveInt = 1      # torch intra-op threads; 2 threads thrash when anything else shares 2 cores
    processes: PositiveInt = 1    # > 1: data-parallel training under torchrun (lib/movielens/distributed.py)


class Evaluate(Section):
    splits: list[Literal["val", "test"]] = ["val", "test"]
    top_k: Annotated[int, Field(ge=max(KS))] = 100
    diversity_k: int = 10
    bootstrap: Annotated[int, Field(ge=20)] = 1000
    latency: bool = False
    latency_repeats: PositiveInt = 1000
    # the protocol at test time (validation is always scored on the training history):
    query_history: Literal["train", "train+val"] = "train"   # train+val: queries read history through validation
    refit: bool = False          # refit every model on train+val with what validation chose, then test

    @model_validator(mode="after")
    def _consistent(self):
        if not self.splits:
            raise ParamsError("evaluate.splits: a subset of [val, test]")
        if not 2 <= self.diversity_k <= self.top_k:
            raise ParamsError(f"evaluate.diversity_k must be in 2..top_k, got {self.diversity_k}")
        if self.refit and self.query_history != "train+val":
            raise ParamsError("evaluate.refit trains on train+val, so its queries read that history: "
                              "set evaluate.query_history: train+val")
        return self


class RunParams(Section):
    data: Data = Data()
    model: Model = Model()
    loss: Loss = Loss()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()

    @model_validator(mode="after")
    def _across_sections(self):
        if self.train.processes > 1 and self.train.batching != "interactions":
            raise ParamsError("train.processes > 1 needs train.batching: interactions (user batches train "
                              "in one process)")
        if self.train.batch_size % self.train.processes:
            raise ParamsError(f"train.batch_size ({self.train.batch_size}) must be a multiple of train.processes "
                              f"({self.train.processes}): each process takes an equal share of a batch")
        if self.train.processes > 1 and self.model.kind != "two_tower":
            raise ParamsError("train.processes > 1 is for the two-tower; the baselines fit in one process")
        if self.train.batching in ("users", "sequences") and self.loss.kind != "full_softmax":
            raise ParamsError(f"train.batching: {self.train.batching} needs loss.kind: full_softmax (a softmax "
                              f"over the whole catalog per {'user' if self.train.batching == 'users' else 'position'})")
        sequential = self.model.architecture in ("sasrec", "gru4rec")
        if self.model.kind == "two_tower" and sequential != (self.train.batching == "sequences"):
            raise ParamsError(f"model.architecture: {self.model.architecture} trains with train.batching: "
                              f"{'sequences' if sequential else 'interactions or users'}")
        if self.model.architecture == "linear" and self.train.batching != "users":
            raise ParamsError("model.architecture: linear trains with train.batching: users (a user's held-out "
                              "items predicted from the rest of the history)")
        if self.loss.half_life_days is not None and self.train.batching == "interactions":
            raise ParamsError("loss.half_life_days weighs the targets of train.batching: users or sequences")
        if self.data.dataset != "interactions" and not 0 <= self.train.positive_min_rating <= 5:
            raise ParamsError(f"train.positive_min_rating must be in 0..5, got {self.train.positive_min_rating}")
        return self
