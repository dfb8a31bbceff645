#!/usr/bin/env python
"""How much of the demo data's planted signal the features can reveal: AUC ceilings.

    python scripts/demo_ceiling.py                       # data/demo, preset demo, seed 2025
    python scripts/demo_ceiling.py --data data/demo --item-info data/demo/item_info.orig.parquet
    python scripts/demo_ceiling.py --json ceiling.json

The oracle (oracle.parquet) knows every item's latent content ``z`` (16-d). No feature shows
``z`` whole: ``item_emb_d128`` is a noisy view of it (or, after ``make demo``, the PCA of CLIP
image features), and the tags reveal the item's topic. This script regenerates the
generator's world from (preset, seed), then scores the valid split with the generator's
EXACT click formula (mmctr.data.demo) in which ``z`` is replaced by what a feature reveals:

- ``embedding``: the best linear read-out of ``z`` from the item_info embedding column (least
  squares fitted on the true ``z``: an upper bound for any linear decoder of that column);
- ``topic``: the mean ``z`` of the item's topic (what the tags can tell at best);
- ``embedding + topic``: the best linear read-out from both;
- ``item part only``: everything but the history-target affinity (what a model that ignores
  the history can reach at best).

Every row keeps the true per-item constants (appeal, tag and id effects), so these are
optimistic ceilings for the affinity part, not the Bayes-optimal AUC; a model that learns
``z`` from the id embeddings as well can in principle go above the ``embedding`` row. The
gap between ``oracle`` and the best row is signal no feature carries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import roc_auc_score

from mmctr.data import demo

ROOT = Path(__file__).resolve().parents[1]


def _embedding(path: Path, column: str) -> np.ndarray:
    col = pq.read_table(path, columns=[column]).column(column).combine_chunks()
    width = len(col[0])
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
        -1, width
    )


def linear_readout(features: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares ``z`` from ``features`` (rows 1..n; row 0 stays the zero padding) and the
    R^2 of the fit."""
    x = np.c_[features[1:], np.ones(len(features) - 1)]
    w, *_ = np.linalg.lstsq(x, z[1:], rcond=None)
    fit = x @ w
    r2 = 1.0 - ((fit - z[1:]) ** 2).sum() / ((z[1:] - z[1:].mean(0)) ** 2).sum()
    return np.r_[np.zeros((1, z.shape[1])), fit], float(r2)


def affinity(z: np.ndarray, seq: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The generator's ``aff`` (recency-weighted cosine + attention-like term), vectorised over
    a left-padded (N, L) history matrix, with item contents ``z``."""
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    zn = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)
    h, t = zn[seq], zn[target]
    mask = seq > 0
    age = (seq.shape[1] - 1 - np.arange(seq.shape[1]))[None, :].astype(np.float64)
    w = np.exp(-age / demo.RECENCY_TAU) * mask
    s = np.einsum("nld,nd->nl", h, t)
    hsum = (h * w[..., None]).sum(1)
    cos = (hsum * t).sum(1) / np.maximum(np.linalg.norm(hsum, axis=1), 1e-12)
    logits = np.where(mask, demo.ATTN_TEMP * s + np.log(np.maximum(w, 1e-300)), -np.inf)
    a = np.exp(logits - logits.max(1, keepdims=True))
    att = (a * s).sum(1) / a.sum(1)
    return 0.5 * cos + 0.5 * att


def ceilings(
    data: Path, item_info: Path, column: str, preset: str, seed: int, split: str = "valid"
) -> dict:
    world = demo._build_world(demo.PRESETS[preset], seed)
    rows = pq.read_table(data / f"{split}.parquet").to_pandas()
    oracle = pq.read_table(data / "oracle.parquet").to_pandas()
    p_true = oracle.loc[oracle["split"] == split, "p_true"].to_numpy()
    y = rows["label"].to_numpy()
    seq = np.stack(rows["item_seq"].to_numpy()).astype(np.int64)
    target = rows["item_id"].to_numpy()
    likes, views = rows["likes_level"].to_numpy(), rows["views_level"].to_numpy()
    rest = (
        world.item_const[target]
        + demo.LIKES_EFF[likes]
        + demo.VIEWS_EFF[views]
        + 0.08 * (likes - views)
    )
    emb = _embedding(item_info, column)
    if len(emb) != len(world.z):
        raise SystemExit(
            f"{item_info}: {len(emb)} items, but preset {preset!r} has {len(world.z)}; "
            "pass the --preset and --seed the data was generated with"
        )
    topic = np.zeros_like(world.z)
    for c in np.unique(world.cluster[1:]):
        members = world.cluster == c
        members[0] = False
        topic[members] = world.z[members].mean(0)
    one_hot = np.eye(world.preset.n_clusters)[world.cluster]
    z_emb, r2_emb = linear_readout(emb, world.z)
    z_both, r2_both = linear_readout(np.c_[emb, one_hot], world.z)
    r2_topic = linear_readout(one_hot, world.z)[1]

    def auc(z: np.ndarray | None) -> float:
        score = rest if z is None else demo.A_AFF * affinity(z, seq, target) + rest
        return float(roc_auc_score(y, score))

    out = {
        "split": split,
        "rows": int(len(y)),
        "item_info": str(item_info),
        "column": column,
        "oracle": float(roc_auc_score(y, p_true)),
        "exact formula, true z": auc(world.z),
        "embedding": auc(z_emb),
        "topic": auc(topic),
        "embedding + topic": auc(z_both),
        "item part only": auc(None),
        "r2": {"embedding": r2_emb, "topic": r2_topic, "embedding + topic": r2_both},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT / "data" / "demo"), help="generated data folder")
    p.add_argument("--item-info", help="item_info parquet to read the embedding from")
    p.add_argument("--column", default="item_emb_d128")
    p.add_argument("--preset", default="demo", choices=sorted(demo.PRESETS))
    p.add_argument("--seed", type=int, default=2025)
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    data = Path(args.data)
    item_info = Path(args.item_info) if args.item_info else data / "item_info.parquet"
    res = ceilings(data, item_info, args.column, args.preset, args.seed, args.split)
    print(f"AUC ceilings on {args.split} ({res['rows']:,} rows), embedding from {item_info}:")
    for key in ("oracle", "exact formula, true z", "embedding + topic", "embedding", "topic"):
        r2 = res["r2"].get(key)
        extra = f"   (linear read-out of z: R^2 {r2:.3f})" if r2 is not None else ""
        print(f"  {key:24s} {res[key]:.4f}{extra}")
    print(f"  {'item part only':24s} {res['item part only']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
