"""Simple baselines fitted beside every run: does the deep model earn its cost?

Both are fitted on the train split and scored on the splits the model is scored on:

- ``popularity``: the target item's smoothed train click rate,
  ``(clicks + m * prior) / (shows + m)`` with ``m = PRIOR_STRENGTH`` and ``prior`` the train
  click rate (an item never shown in train scores ``prior``);
- ``logreg``: a scikit-learn logistic regression on cheap features the data carries
  (:func:`baseline_features`): the target item's rate and count, how much the history's
  tags overlap the target's, how close the history's frozen embeddings are to the target's,
  the history length and one-hot side features (likes_level, views_level).

For the train rows the item rate is out-of-fold (``FOLDS`` folds): a row's own label never
enters its own feature, which would otherwise leak the label (an item seen 20 times moves
its rate by 1/20 with each click). Everything is vectorised numpy over the compact history
(:class:`~mmctr.data.dataset.History`): no per-row Python. Training splits larger than
``max_train_rows`` are subsampled for the fit (the result says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmctr.config.schema import DatasetConfig
from mmctr.data.dataset import TARGET_COL, ItemTable, SplitData
from mmctr.training.metrics import evaluate_predictions

PRIOR_STRENGTH = 10.0
FOLDS = 5
MAX_TRAIN_ROWS = 1_000_000
BASELINES = ("popularity", "logreg")


@dataclass
class ItemRates:
    """Per-item train clicks and shows (index = item id), and the overall click rate."""

    clicks: np.ndarray
    shows: np.ndarray
    prior: float

    @classmethod
    def fit(cls, items: np.ndarray, labels: np.ndarray, n_items: int) -> ItemRates:
        labels = np.asarray(labels, dtype=np.float64)
        return cls(
            clicks=np.bincount(items, weights=labels, minlength=n_items),
            shows=np.bincount(items, minlength=n_items).astype(np.float64),
            prior=float(labels.mean()),
        )

    def rate(self, items: np.ndarray) -> np.ndarray:
        return (self.clicks[items] + PRIOR_STRENGTH * self.prior) / (
            self.shows[items] + PRIOR_STRENGTH
        )


def out_of_fold_rate(
    items: np.ndarray, labels: np.ndarray, n_items: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed rate, shows) of each train row's item, counted on the OTHER folds only
    (the prior too): no row's label enters its own feature."""
    full = ItemRates.fit(items, labels, n_items)
    fold = np.random.default_rng(seed).integers(0, FOLDS, len(items))
    rate = np.empty(len(items))
    shows = np.empty(len(items))
    for f in range(FOLDS):
        rows = fold == f
        own = ItemRates.fit(items[rows], labels[rows], n_items)
        other = ItemRates(
            full.clicks - own.clicks,
            full.shows - own.shows,
            float(labels[~rows].mean()) if (~rows).any() else full.prior,
        )
        rate[rows] = other.rate(items[rows])
        shows[rows] = other.shows[items[rows]]
    return rate, shows


def _segment_stats(values: np.ndarray, split: SplitData) -> np.ndarray:
    """Per row of ``split``: mean, max and last of ``values`` (one per history item, in the
    order of ``split.history.values``); 0 for an empty history. -> (N, 3)."""
    lengths = split.history.lengths
    row_of = np.repeat(np.arange(split.n_rows), lengths)
    out = np.zeros((split.n_rows, 3))
    out[:, 0] = np.bincount(row_of, weights=values, minlength=split.n_rows) / np.maximum(lengths, 1)
    full = lengths > 0
    if full.any():
        starts = split.history.offsets[:-1][full]
        out[full, 1] = np.maximum.reduceat(values, starts)
        out[full, 2] = values[split.history.offsets[1:][full] - 1]
    return out


def _history_items(split: SplitData) -> tuple[np.ndarray, np.ndarray]:
    """(history item ids, the target item of each history item's row), both flat."""
    hist = split.history.values.astype(np.int64)
    row_of = np.repeat(np.arange(split.n_rows), split.history.lengths)
    return hist, split.columns[TARGET_COL][row_of]


def tag_overlap(tags: np.ndarray, split: SplitData) -> np.ndarray:
    """Share of the target's tags that each history item also carries -> (N, 3) stats."""
    hist, target = _history_items(split)
    t = tags[target]  # (T, S)
    found = (tags[hist][:, :, None] == t[:, None, :]).any(axis=1) & (t != 0)
    share = found.sum(axis=1) / np.maximum((t != 0).sum(axis=1), 1)
    return _segment_stats(share.astype(np.float64), split)


def embedding_similarity(unit: np.ndarray, split: SplitData) -> np.ndarray:
    """Cosine of each history item's vector with the target's (mean, max, last), and of the
    history's summed vector with the target's -> (N, 4). ``unit``: unit-norm rows."""
    hist, target = _history_items(split)
    h = unit[hist]
    cos = np.einsum("td,td->t", h, unit[target]).astype(np.float64)
    stats = _segment_stats(cos, split)
    # cos(sum_j h_j, t) = sum_j cos_j / |sum_j h_j|
    lengths = split.history.lengths
    norm = np.ones(split.n_rows)
    full = lengths > 0
    if full.any():
        summed = np.add.reduceat(h, split.history.offsets[:-1][full], axis=0)
        norm[full] = np.maximum(np.linalg.norm(summed, axis=1), 1e-12)
    return np.c_[stats, stats[:, 0] * lengths / norm]


def baseline_features(
    split: SplitData,
    dataset: DatasetConfig,
    items: ItemTable,
    rate: np.ndarray,
    shows: np.ndarray,
    chunk_rows: int = 65_536,
) -> np.ndarray:
    """The logistic regression's design matrix (N, F), unscaled; ``rate``/``shows`` of the
    rows' target items (out-of-fold for the train split). Built ``chunk_rows`` rows at a
    time, so memory stays bounded however long the split."""
    units = {}
    for f in dataset.item_features:
        if f.type == "embedding":
            table = np.asarray(items.features[f.name], dtype=np.float32)
            norm = np.linalg.norm(table, axis=1, keepdims=True)
            units[f.name] = np.divide(table, norm, out=np.zeros_like(table), where=norm > 0)
    parts = []
    for lo in range(0, max(split.n_rows, 1), chunk_rows):
        hi = min(split.n_rows, lo + chunk_rows)
        parts.append(
            _features(split.slice(lo, hi), dataset, items, units, rate[lo:hi], shows[lo:hi])
        )
    return np.concatenate(parts)


def _features(
    split: SplitData,
    dataset: DatasetConfig,
    items: ItemTable,
    units: dict[str, np.ndarray],
    rate: np.ndarray,
    shows: np.ndarray,
) -> np.ndarray:
    cols = [rate[:, None], np.log1p(shows)[:, None], np.log1p(split.seq_len)[:, None]]
    for f in dataset.item_features:
        if f.type == "sequence":
            cols.append(tag_overlap(items.features[f.name], split))
        elif f.type == "embedding":
            cols.append(embedding_similarity(units[f.name], split))
    for f in dataset.side_features:
        x = split.columns[f.name]
        if f.type == "categorical" and f.vocab_size:
            cols.append(np.eye(int(f.vocab_size))[np.clip(x, 0, int(f.vocab_size) - 1)])
        else:
            cols.append(np.asarray(x, dtype=np.float64)[:, None])
    return np.concatenate(cols, axis=1)


def fit_baselines(
    train: SplitData,
    splits: dict[str, SplitData],
    dataset: DatasetConfig,
    items: ItemTable,
    *,
    seed: int = 0,
    max_train_rows: int = MAX_TRAIN_ROWS,
) -> dict[str, dict]:
    """Fit both baselines on ``train``; score every labelled split of ``splits``.

    -> ``{"popularity": {"AUC", "logloss", "test": {"AUC", "logloss"}}, "logreg": {...,
    "fit_rows": n, "subsampled": bool}}``: the valid split's metrics at the top of each
    baseline, every other split's under its name; ``fit_rows`` the rows the logistic
    regression was fitted on.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_items = items.n_items
    y = np.asarray(train.labels)
    target = train.columns[TARGET_COL]
    rates = ItemRates.fit(target, y, n_items)
    rows = np.arange(train.n_rows)
    if train.n_rows > max_train_rows:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(train.n_rows, max_train_rows, replace=False))
    fit_split = train if len(rows) == train.n_rows else train.take(rows)
    oof_rate, oof_shows = out_of_fold_rate(target, y, n_items, seed)
    x_fit = baseline_features(fit_split, dataset, items, oof_rate[rows], oof_shows[rows])
    logreg = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    logreg.fit(x_fit, y[rows])
    out: dict[str, dict] = {k: {} for k in BASELINES}
    for name, split in splits.items():
        if split.labels is None:
            continue
        t = split.columns[TARGET_COL]
        pop = rates.rate(t)
        x = baseline_features(split, dataset, items, pop, rates.shows[t])
        scores = {"popularity": pop, "logreg": logreg.predict_proba(x)[:, 1]}
        for baseline, p in scores.items():
            m = evaluate_predictions(split.labels, p)
            if name == "valid":
                out[baseline].update(m)
            else:
                out[baseline][name] = m
    out["logreg"]["fit_rows"] = len(rows)
    out["logreg"]["subsampled"] = len(rows) < train.n_rows
    return out


def report_baselines(baselines: dict[str, dict], model_valid: dict, log) -> dict[str, dict]:
    """Log ``baselines: popularity AUC x | logreg AUC y | model AUC z (+d over the best)``,
    and a warning when the model does not beat the best baseline; returns ``baselines``."""
    names = [k for k in BASELINES if k in baselines]
    best = max(names, key=lambda k: baselines[k]["AUC"])
    margin = model_valid["AUC"] - baselines[best]["AUC"]
    parts = [f"{k} AUC {baselines[k]['AUC']:.5f}" for k in names]
    log.info(
        "baselines: %s | model AUC %.5f (%+.5f over the best)%s",
        " | ".join(parts),
        model_valid["AUC"],
        margin,
        f" (logreg fitted on {baselines['logreg']['fit_rows']:,} subsampled train rows)"
        if baselines.get("logreg", {}).get("subsampled")
        else "",
    )
    if margin <= 0:
        log.warning(
            "the model does not beat the %s baseline on valid AUC (%.5f <= %.5f): "
            "the deep model is not earning its cost on this data",
            best,
            model_valid["AUC"],
            baselines[best]["AUC"],
        )
    return baselines
