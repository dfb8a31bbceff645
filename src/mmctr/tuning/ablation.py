"""Which signal does the model use? Train one experiment with one input removed at a time.

    python scripts/ablate.py --config config/demo --expid Transformer_DCN_demo
    python scripts/ablate.py --config config/demo --expid DIN_demo --only full no_history

Each variant is the same experiment (same seed, same epochs, early stopping) with one change:

==================  =============================================================
full                nothing removed
no_item_emb         every frozen ``embedding`` item feature (item_emb_d128) inactive
no_item_tags        every ``sequence`` item feature (item_tags) inactive
no_side             the per-row side features (likes_level, views_level) inactive
no_history          ``item_seq`` all padding in every split
shuffled_history    each history's items in a random order (what recency tells)
==================  =============================================================

Feature switches go through ``--override feature_cols=[...]`` (the run's config.yaml records
them); history variants read rewritten copies of the splits. Runs land in
``<out>/<variant>/<dataset_id>/<expid>/``; the table reports valid AUC at the best
evaluation, its change against ``full``, and the train loss and valid logloss there (a train
loss far under the valid logloss: overfitting; both high: underfitting).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mmctr.atomic import atomic_write_parquet, atomic_write_text
from mmctr.columns import HISTORY_COL
from mmctr.config import ExperimentConfig, load_config


def _inactive(kind: Callable[[dict], bool]) -> Callable[[ExperimentConfig], list[str]]:
    def change(cfg: ExperimentConfig) -> list[str]:
        cols = [dict(f) for f in cfg.params["feature_cols"]]
        for f in cols:
            if kind(f):
                f["active"] = False
        text = yaml.safe_dump(cols, default_flow_style=True, width=10**6).strip()
        return [f"feature_cols={text}"]

    return change


def _item(kind: str) -> Callable[[dict], bool]:
    return lambda f: f.get("source") == "item" and f.get("type") == kind


def _side(f: dict) -> bool:
    return f.get("source") != "item" and f.get("type") not in ("meta", None)


def _no_history(seq: pa.ListArray, rng: np.random.Generator) -> pa.Array:
    width = len(seq[0]) if len(seq) else 0
    zeros = pa.array(np.zeros(len(seq) * width, dtype=np.int64))
    return pa.FixedSizeListArray.from_arrays(zeros, width).cast(seq.type)


def _shuffled_history(seq: pa.ListArray, rng: np.random.Generator) -> pa.Array:
    """Permute the real items of every row among the row's real positions (padding stays)."""
    mat = np.stack(seq.to_numpy(zero_copy_only=False)).astype(np.int64)
    keys = rng.random(mat.shape) + (mat == 0) * -2.0  # padding sorts first, real items after
    order = np.argsort(keys, axis=1, kind="stable")
    out = np.take_along_axis(mat, order, axis=1)
    flat = pa.array(out.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]).cast(seq.type)


#: variant -> feature change (overrides) or history rewrite
FEATURE_VARIANTS: dict[str, Callable[[ExperimentConfig], list[str]]] = {
    "no_item_emb": _inactive(_item("embedding")),
    "no_item_tags": _inactive(_item("sequence")),
    "no_side": _inactive(_side),
}
HISTORY_VARIANTS: dict[str, Callable[[pa.ListArray, np.random.Generator], pa.Array]] = {
    "no_history": _no_history,
    "shuffled_history": _shuffled_history,
}
VARIANTS = ("full", *FEATURE_VARIANTS, *HISTORY_VARIANTS)


def rewrite_splits(cfg: ExperimentConfig, variant: str, out: Path, seed: int = 0) -> list[str]:
    """Copies of train/valid/test with ``item_seq`` rewritten; -> the path overrides."""
    change = HISTORY_VARIANTS[variant]
    overrides = []
    for key in ("train_data", "valid_data", "test_data"):
        src = getattr(cfg.dataset, key)
        if not src or not Path(src).is_file():
            continue
        dst = out / f"{Path(src).stem}.parquet"
        if not dst.is_file():
            table = pq.read_table(src)
            col = table.column(HISTORY_COL).combine_chunks()
            rng = np.random.default_rng([seed, len(overrides)])
            idx = table.schema.get_field_index(HISTORY_COL)
            table = table.set_column(idx, HISTORY_COL, change(col, rng))
            atomic_write_parquet(table, dst)
        overrides.append(f"{key}={dst}")
    return overrides


def variant_config(
    config_dir: str | Path, expid: str, variant: str, out: Path, overrides: list[str]
) -> ExperimentConfig:
    base = load_config(config_dir, expid, overrides=overrides)
    extra = [f"model_root={out / variant}"]
    if variant in FEATURE_VARIANTS:
        extra += FEATURE_VARIANTS[variant](base)
    elif variant in HISTORY_VARIANTS:
        data = out / "data" / variant
        data.mkdir(parents=True, exist_ok=True)
        extra += rewrite_splits(base, variant, data)
    elif variant != "full":
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return load_config(config_dir, expid, overrides=[*overrides, *extra, "baselines=false"])


def summarize(variant: str, results: dict[str, Any]) -> dict[str, Any]:
    """One table row from a run's metrics: the best evaluation's valid AUC and losses."""
    best = max(results["history"], key=lambda h: h["monitor"]) if results["history"] else {}
    return {
        "variant": variant,
        "valid_AUC": results["valid"]["AUC"],
        "valid_logloss": results["valid"]["logloss"],
        "best_epoch": best.get("epoch"),
        "train_loss_at_best": best.get("train_loss"),
        "epochs": results.get("epochs"),
    }


def run_ablation(
    config_dir: str | Path,
    expid: str,
    out: str | Path,
    variants: list[str] | None = None,
    overrides: list[str] | None = None,
    gpu: int = -1,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train every variant (a finished one is reused); -> table rows, ``full`` first."""
    from mmctr.training.trainer import train

    out = Path(out)
    rows = []
    print(HEADER, flush=True)
    for variant in variants or VARIANTS:
        cfg = variant_config(config_dir, expid, variant, out, list(overrides or []))
        done = cfg.run_dir / "metrics.json"
        results = json.loads(done.read_text()) if done.is_file() else None
        if results is None:
            results = train(cfg, gpu=gpu, progress=progress)
        rows.append(summarize(variant, results))
        print(format_row(rows[-1], rows[0]), flush=True)
    atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2) + "\n")
    return rows


HEADER = (
    f"{'variant':<18}{'valid AUC':>10}{'vs full':>9}{'logloss':>9}"
    f"{'train loss':>11}{'best ep':>8}{'epochs':>7}"
)


def format_row(row: dict[str, Any], full: dict[str, Any]) -> str:
    delta = row["valid_AUC"] - full["valid_AUC"]
    train_loss = row["train_loss_at_best"]
    return (
        f"{row['variant']:<18}{row['valid_AUC']:>10.4f}{delta:>+9.4f}{row['valid_logloss']:>9.4f}"
        f"{train_loss if train_loss is not None else float('nan'):>11.4f}"
        f"{row['best_epoch'] or 0:>8.2f}{row['epochs'] or 0:>7d}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([HEADER, *(format_row(r, rows[0]) for r in rows)])
