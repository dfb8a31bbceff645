"""Metrics over a whole split: AUC, logloss, gAUC (user-grouped AUC) and FuxiCTR's monitor."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _average_ranks(keys_sorted_group: np.ndarray, scores_sorted: np.ndarray) -> np.ndarray:
    """1-based ranks of already (group, score)-sorted rows, ties (same group and score) averaged."""
    n = len(scores_sorted)
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (keys_sorted_group[1:] != keys_sorted_group[:-1]) | (
        scores_sorted[1:] != scores_sorted[:-1]
    )
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1 .. end
    return np.repeat(avg, ends - starts)


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """AUC per group (user), averaged with weights = group size, over groups that have both
    a positive and a negative. Vectorised: one lexsort, no per-group Python loop."""
    labels = np.asarray(labels, dtype=np.float64)
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], np.asarray(scores)[order], labels[order]
    ranks = _average_ranks(g, s)
    uniq, first, counts = np.unique(g, return_index=True, return_counts=True)
    offset = np.repeat(first, counts)  # global position of each row's group start
    local_rank = ranks - offset
    seg = np.repeat(np.arange(len(uniq)), counts)
    n_pos = np.bincount(seg, weights=y, minlength=len(uniq))
    n_neg = counts - n_pos
    pos_rank_sum = np.bincount(seg, weights=local_rank * y, minlength=len(uniq))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    group_auc = (pos_rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(np.average(group_auc, weights=counts[ok]))


def evaluate_predictions(
    labels: np.ndarray, probs: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, float]:
    out = {"AUC": auc(labels, probs), "logloss": logloss(labels, probs)}
    if groups is not None:
        out["gAUC"] = gauc(labels, probs, groups)
    return out


def monitor_value(metrics: dict[str, float], monitor: str | dict[str, float]) -> float:
    """FuxiCTR's monitor: a metric name, or a weighted sum like {AUC: 1, logloss: -1}."""
    if isinstance(monitor, str):
        monitor = {monitor: 1.0}
    missing = [k for k in monitor if k not in metrics]
    if missing:
        raise KeyError(
            f"monitor names metric(s) {missing} that are not computed: {sorted(metrics)}"
        )
    return float(sum(float(w) * metrics[k] for k, w in monitor.items()))
