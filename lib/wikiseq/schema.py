"""The sequence study's params, declared once (``lib.core.schema``): each section's keys
with type, default, range and allowed values, and the rules between keys. ``steps.DEFAULTS``
is ``defaults(RunParams)``; ``steps.validate`` is ``check(RunParams, cfg)``.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..core.params import ParamsError
from ..core.retrieval import INDEXES
from ..core.schema import Section

SOURCES = ("builtin", "npz", "textdir", "synthetic")
TOWERS = ("gru", "residual")
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


class Data(Section):
    source: Literal[SOURCES] = "builtin"
    path: str | None = None                   # the .npz bank or the folder of .txt files
    wiki_articles: PositiveInt | None = None  # cap on gensim wiki articles (None = all 106)
    summaries: Count | None = None            # cap on ovos summaries (None = all, 0 = none)
    min_words: PositiveInt = 3                # a chunk is a sentence of at least this many words
    embed_batch: PositiveInt = 64
    ctx_len: PositiveInt = 100
    stride: PositiveInt = 1                   # window stride for training/validation pairs
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # share of long articles held out (by article)
    n_train: PositiveInt | None = 1247        # training pairs drawn from train articles (None = all)
    n_val: PositiveInt | None = 139           # validation pairs drawn from val articles (None = all)
    n_eval: PositiveInt = 1000                # common final evaluation queries (same for every run)
    pair_cap: PositiveInt | None = None       # caps n_train (quick profiles)
    split_seed: int = 0                       # article split, pair sampling, eval set, synthetic bank
    synth_articles: PositiveInt = 40
    synth_len: PositiveInt = 160
    synth_dim: PositiveInt = 32
    synth_distractors: Count = 400

    @model_validator(mode="after")
    def _path(self):
        if self.source in ("npz", "textdir") and not self.path:
            raise ParamsError(f"data.path is required for source {self.source}")
        return self


class Model(Section):
    tower: Literal[TOWERS] = "gru"              # gru (the reference's GRUPoolQuery) | residual
    gru_hidden: PositiveInt = 512               # GRU hidden size (per direction)
    decay: Annotated[float, Field(gt=0, le=1)] = 0.9  # residual tower: decay of its exp-weighted base


class Loss(Section):
    temperature: Annotated[float, Field(gt=0)] = 0.07
    hard_negatives: Count = 0                 # per pair, mined from the bank (0 = in-batch only)
    hard_pool: PositiveInt = 50               # mined among the top hard_pool of the heuristic query

    @model_validator(mode="after")
    def _pool(self):
        if self.hard_pool < self.hard_negatives:
            raise ParamsError("loss.hard_pool must be >= loss.hard_negatives")
        return self


class Train(Section):
    max_epochs: Count = 8                     # epochs run (no early stopping in this study)
    epoch_cap: Count | None = None            # caps max_epochs (quick profiles, smoke)
    batch_size: Annotated[int, Field(ge=2)] = 32  # in-batch negatives need two
    accum_steps: PositiveInt = 8
    learning_rate: Annotated[float, Field(gt=0)] = 2e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    threads: PositiveInt = 1                  # torch + faiss threads (1: no OpenMP spin on a shared CPU)
    epoch_eval_queries: PositiveInt = 200     # validation queries scored over the bank after each epoch


class Evaluate(Section):
    cutoffs: list[PositiveInt] = [10, 100, 500, 1000]  # Recall@cutoff
    index: Literal[INDEXES] = "exact"         # exact | ivf (the reference's IVF-flat)
    nlist: PositiveInt | None = None          # IVF lists (None = ~4 sqrt(N))
    nprobe: PositiveInt = 32
    heuristic_decay: Annotated[float, Field(gt=0, le=1)] = 0.9
    small_bank: Count = 10000                 # Option 2: also score against a bank this large (0 = skip)
    batch_size: Annotated[int, Field(ge=2)] = 32  # in-batch top-1 is measured in blocks of this size

    @field_validator("cutoffs")
    @classmethod
    def _increasing(cls, cutoffs):
        if not cutoffs or list(cutoffs) != sorted(set(cutoffs)):
            raise ParamsError(f"evaluate.cutoffs must be strictly increasing positive integers, got {cutoffs}")
        return cutoffs


class RunParams(Section):
    data: Data = Data()
    model: Model = Model()
    loss: Loss = Loss()
    train: Train = Train()
    evaluate: Evaluate = Evaluate()
