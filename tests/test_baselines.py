"""The simple baselines: exact values on hand-made data, no label leak, wired into train()."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mmctr.config.schema import DatasetConfig, FeatureSpec
from mmctr.data.dataset import History, ItemTable, SplitData
from mmctr.training.baselines import (
    PRIOR_STRENGTH,
    baseline_features,
    embedding_similarity,
    fit_baselines,
    out_of_fold_rate,
    report_baselines,
    tag_overlap,
)


def _split(targets, histories, labels=None, likes=None) -> SplitData:
    lengths = np.array([len(h) for h in histories])
    values = np.array([i for h in histories for i in h], dtype=np.int32)
    n = len(targets)
    likes = np.ones(n, dtype=np.int64) if likes is None else np.asarray(likes)
    return SplitData(
        path="hand-made",
        n_rows=n,
        columns={"item_id": np.asarray(targets), "likes_level": likes},
        history=History(values, np.r_[0, np.cumsum(lengths)], 8),
        seq_len=lengths,
        labels=None if labels is None else np.asarray(labels),
    )


def _dataset() -> DatasetConfig:
    return DatasetConfig(
        dataset_id="hand",
        feature_cols=[
            FeatureSpec("item_seq", "meta"),
            FeatureSpec("likes_level", "categorical", vocab_size=3),
            FeatureSpec("item_id", "categorical", vocab_size=6, source="item"),
            FeatureSpec("item_tags", "sequence", max_len=3, vocab_size=10, source="item"),
            FeatureSpec(
                "item_emb_d128", "embedding", dtype="float", embedding_dim=2, source="item"
            ),
        ],
    )


TAGS = np.array([[0, 0, 0], [0, 1, 2], [0, 0, 3], [1, 2, 3], [0, 0, 4], [0, 0, 0]])
EMB = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0], [0, 0]], dtype=np.float32)
ITEMS = ItemTable(6, {"item_tags": TAGS, "item_emb_d128": EMB})


def test_popularity_is_the_smoothed_train_rate_with_exact_auc():
    # item 1: 4 shows 4 clicks; item 2: 4 shows 0; item 3: 2 shows 1 -> prior 0.5
    train = _split([1] * 4 + [2] * 4 + [3] * 2, [[1]] * 10, [1] * 4 + [0] * 4 + [1, 0])
    valid = _split([1, 2, 3, 3, 4], [[1]] * 5, [1, 0, 1, 0, 0])
    out = fit_baselines(train, {"valid": valid}, _dataset(), ITEMS)
    m = PRIOR_STRENGTH
    scores = np.array([(4 + m / 2) / (4 + m), (0 + m / 2) / (4 + m), 0.5, 0.5, 0.5])
    # positives {9/14, .5} against negatives {5/14, .5, .5}: 3 + (1 + 2 * 0.5) wins of 6
    assert out["popularity"]["AUC"] == pytest.approx(5 / 6)
    y = np.array([1, 0, 1, 0, 0])
    logloss = -np.mean(y * np.log(scores) + (1 - y) * np.log(1 - scores))
    assert out["popularity"]["logloss"] == pytest.approx(logloss)
    assert set(out["logreg"]) >= {"AUC", "logloss", "fit_rows", "subsampled"}
    assert out["logreg"]["fit_rows"] == 10 and out["logreg"]["subsampled"] is False


def test_tag_overlap_and_embedding_similarity_by_hand():
    # row 0: target 3 (tags 1 2 3), history [1 (tags 1 2), 2 (tag 3), 4 (tag 4)]
    # row 1: target 1 (tags 1 2), history [] (empty)
    split = _split([3, 1], [[1, 2, 4], []])
    share = tag_overlap(TAGS, split)  # shares of the target's 3 tags: 2/3, 1/3, 0
    np.testing.assert_allclose(share[0], [1 / 3, 2 / 3, 0.0])  # mean, max, last
    np.testing.assert_array_equal(share[1], [0, 0, 0])
    unit = EMB / np.maximum(np.linalg.norm(EMB, axis=1, keepdims=True), 1e-12)
    sim = embedding_similarity(unit, split)
    c = 1 / np.sqrt(2)  # cos of (1,1) with (1,0), with (0,1); -c with (-1,0)
    summed = unit[1] + unit[2] + unit[4]  # (0, 1): cos with (1,1)/sqrt2 = c
    np.testing.assert_allclose(sim[0], [c / 3, c, -c, summed @ unit[3]], atol=1e-6)
    np.testing.assert_array_equal(sim[1], [0, 0, 0, 0])


def test_the_train_rate_feature_never_sees_its_own_label():
    rng = np.random.default_rng(0)
    items = rng.integers(1, 6, 200)
    labels = rng.integers(0, 2, 200)
    rate, shows = out_of_fold_rate(items, labels, 6, seed=3)
    flipped = labels.copy()
    flipped[17] = 1 - flipped[17]
    rate2, _ = out_of_fold_rate(items, flipped, 6, seed=3)
    assert rate2[17] == rate[17]  # its own label is not in its own feature
    assert (shows < np.bincount(items, minlength=6)[items]).all()


def test_design_matrix_is_the_same_in_chunks_and_whole():
    rng = np.random.default_rng(1)
    hist = [list(rng.integers(1, 6, rng.integers(0, 5))) for _ in range(50)]
    split = _split(rng.integers(1, 6, 50), hist, likes=rng.integers(0, 3, 50))
    rate, shows = rng.random(50), rng.integers(0, 9, 50).astype(float)
    whole = baseline_features(split, _dataset(), ITEMS, rate, shows)
    chunked = baseline_features(split, _dataset(), ITEMS, rate, shows, chunk_rows=7)
    np.testing.assert_array_equal(whole, chunked)
    assert whole.shape == (50, 3 + 3 + 4 + 3)  # rate/shows/length, tags, embedding, likes


def test_report_warns_when_the_model_does_not_beat_the_best_baseline(caplog):
    base = {"popularity": {"AUC": 0.6}, "logreg": {"AUC": 0.7, "fit_rows": 10}}
    log = logging.getLogger("test.baselines")
    with caplog.at_level(logging.INFO, logger="test.baselines"):
        report_baselines(base, {"AUC": 0.75}, log)
        report_baselines(base, {"AUC": 0.65}, log)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines[0]
        == "baselines: popularity AUC 0.60000 | logreg AUC 0.70000 | model AUC 0.75000 (+0.05000 over the best)"
    )
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1
    assert "does not beat the logreg baseline" in lines[-1]


def test_split_take_gathers_rows_with_their_histories():
    split = _split([1, 2, 3, 4], [[1, 2], [], [3], [4, 5, 1]], [0, 1, 0, 1])
    part = split.take(np.array([3, 1, 0]))
    assert part.n_rows == 3 and part.labels.tolist() == [1, 1, 0]
    assert part.columns["item_id"].tolist() == [4, 2, 1]
    dense = part.history.dense()
    assert dense[0, -3:].tolist() == [4, 5, 1] and dense[1].sum() == 0
    assert dense[2, -2:].tolist() == [1, 2]


def test_a_large_train_split_is_subsampled_for_the_regression():
    rng = np.random.default_rng(2)
    n = 300
    hist = [list(rng.integers(1, 6, rng.integers(1, 4))) for _ in range(n)]
    train = _split(rng.integers(1, 6, n), hist, rng.integers(0, 2, n), rng.integers(0, 3, n))
    valid = _split(rng.integers(1, 6, 40), hist[:40], rng.integers(0, 2, 40))
    out = fit_baselines(train, {"valid": valid}, _dataset(), ITEMS, max_train_rows=100)
    assert out["logreg"]["fit_rows"] == 100 and out["logreg"]["subsampled"] is True
