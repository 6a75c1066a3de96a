"""Window building and the split by article, on generated banks."""
import numpy as np
import pytest

from lib.core.params import ParamsError
from lib.wikiseq import data

pytestmark = pytest.mark.unit


def _bank(lengths):
    lens = np.array(lengths)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    article = np.repeat(np.arange(len(lens)), lens)
    return starts, lens, article


@pytest.mark.parametrize("ctx,stride", [(3, 1), (3, 2), (5, 4), (1, 1), (10, 3)])
def test_windows_stay_inside_one_article_and_counts(ctx, stride):
    starts, lens, article = _bank([12, 3, 25, 11, 1, 40])
    s = data.article_windows(starts, lens, ctx, stride)
    # context s..s+ctx-1 and target s+ctx all in the same article
    assert np.all(article[s] == article[s + ctx])
    assert np.all(article[s] == article[s + ctx - 1])
    expected = sum(data.n_windows(int(n), ctx, stride) for n in lens)
    assert len(s) == expected
    # closed form: floor((n - ctx - 1) / stride) + 1 per article longer than ctx
    assert expected == sum((n - ctx - 1) // stride + 1 for n in lens if n > ctx)
    # consecutive windows of one article are `stride` apart
    same = article[s[1:]] == article[s[:-1]]
    assert np.all(np.diff(s)[same] == stride)


def test_stride_one_count_and_gather():
    starts, lens, _ = _bank([7, 2, 9])
    s = data.article_windows(starts, lens, 4, 1)
    assert len(s) == (7 - 4) + (9 - 4)
    vecs = np.arange(18, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    ctx, tgt = data.gather(vecs, s, 4)
    assert ctx.shape == (len(s), 4, 3)
    np.testing.assert_array_equal(ctx[:, -1, 0] + 1, tgt[:, 0])  # target follows the context


def test_train_and_val_share_no_article():
    starts, lens, article = _bank(list(np.random.default_rng(0).integers(5, 60, size=30)))
    tr, va = data.split_articles(lens, 10, 0.2, seed=3)
    assert set(tr).isdisjoint(va)
    assert len(tr) and len(va)
    assert set(tr) | set(va) == set(np.flatnonzero(lens > 10))
    ws_tr = data.article_windows(starts, lens, 10, 1, tr)
    ws_va = data.article_windows(starts, lens, 10, 1, va)
    touched_tr = set(article[(ws_tr[:, None] + np.arange(11)).ravel()])
    touched_va = set(article[(ws_va[:, None] + np.arange(11)).ravel()])
    assert touched_tr.isdisjoint(touched_va)   # not one chunk of a val article in training
    # deterministic for a seed
    tr2, va2 = data.split_articles(lens, 10, 0.2, seed=3)
    np.testing.assert_array_equal(tr, tr2)


def test_sample_exact_count_and_too_many_fails():
    w = np.arange(100)
    s = data.sample(w, 17, seed=0, what="n")
    assert len(s) == 17 and len(set(s)) == 17 and np.all(np.diff(s) > 0)
    with pytest.raises(ParamsError, match="only 100 windows"):
        data.sample(w, 101, seed=0, what="data.n_train")


def test_split_needs_two_long_articles():
    with pytest.raises(ParamsError, match="at least 2 articles"):
        data.split_articles(np.array([50, 3, 4]), 10, 0.1, 0)
