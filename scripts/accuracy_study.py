#!/usr/bin/env python
"""The accuracy table of docs/accuracy.md: every demo model against the simple baselines,
over generator seeds and over contrasting data shapes.

    python scripts/accuracy_study.py                          # everything (~1 h on 2 cores)
    python scripts/accuracy_study.py --settings default --seeds 2025
    python scripts/accuracy_study.py --settings long_history weak_image --expids Transformer_DCN_TA_demo

For each (setting, seed) the demo preset is generated into ``<work>/<setting>_s<seed>/``
(``default``: the demo data with images, embedded by ``make demo``'s random-weight CLIP;
the others: the generator's own ``item_emb_d128``, no images), each experiment of
config/demo is trained on it with its baselines (``run_expid.py`` with data-path and
model_root overrides), and the valid AUCs are tabulated: one row per (setting, seed, model)
in ``<work>/study.json``, a markdown summary (mean ± half-range over the seeds) printed
at the end and a bar chart of models and baselines in ``<work>/study.png``. Finished runs are reused, so an interrupted study continues where it stopped.
``latent``: the default world with the NOISELESS latent content as item_emb_d128
(``--emb-noise 0``, a diagnostic of what the model does with perfect content).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from mmctr.config import load_config
from mmctr.data.demo import Knobs, generate
from mmctr.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]

#: contrasting data shapes (mmctr.data.demo.Knobs); "default" is the demo data itself
SETTINGS: dict[str, tuple[Knobs, bool, list[str]]] = {
    # name -> (knobs, CLIP-embed the images, config overrides for the setting's data)
    "default": (Knobs(), True, []),
    "latent": (Knobs(emb_noise=0.0), False, []),
    "long_history": (Knobs(history_median=40.0, history_sigma=1.0), False, ["max_len=100"]),
    "weak_image": (Knobs(emb_noise=4.0, pop_sigma=1.5, pop_effect=0.8), False, []),
    "weak_topic": (Knobs(topic_rho=0.2, tag_noise=0.5, unseen_user_frac=0.8), False, []),
}
EXPIDS = ("Transformer_DCN_TA_demo", "Transformer_DCN_demo", "DIN_demo", "DCNv2_demo")


def prepare_data(work: Path, setting: str, seed: int) -> Path:
    """The setting's demo data for ``seed`` (reused when complete)."""
    knobs, embed, _ = SETTINGS[setting]
    data = work / f"{setting}_s{seed}"
    marker = data / ".study.json"
    want = {"seed": seed, "knobs": knobs.changed(), "clip": embed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return data
    if data.exists():
        shutil.rmtree(data)
    print(f"[data] {data}: seed {seed}, knobs {knobs.changed() or 'default'}", flush=True)
    generate(data, preset="demo", seed=seed, images=embed, knobs=knobs)
    if embed:
        from mmctr.embedding.encoder import build_random_clip
        from mmctr.embedding.pipeline import generate_embeddings

        clip = ROOT / "data" / "demo_clip"  # the same random-weight CLIP as make demo
        if not (clip / "config.json").is_file():
            build_random_clip(clip, arch="tiny", seed=0)
        original = data / "item_info.orig.parquet"
        shutil.copy2(data / "item_info.parquet", original)
        generate_embeddings(
            item_info=original,
            image_dir=data / "item_images",
            model=str(clip),
            out=data / "item_info.parquet",
            gpu=[-1],
            progress=False,
        )
        shutil.rmtree(data / "item_images")  # 10K files no later step reads
    marker.write_text(json.dumps(want))
    return data


def run_one(work: Path, data: Path, setting: str, expid: str) -> dict:
    overrides = [f"{k}={data / f}.parquet" for k, f in _SPLIT_FILES.items()]
    overrides += [f"model_root={work / 'runs' / data.name}", *SETTINGS[setting][2]]
    cfg = load_config(ROOT / "config" / "demo", expid, overrides=overrides)
    done = cfg.run_dir / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    return train(cfg, gpu=-1, progress=False)


_SPLIT_FILES = {
    "train_data": "train",
    "valid_data": "valid",
    "test_data": "test",
    "item_info": "item_info",
}


def row_of(setting: str, seed: int, expid: str, res: dict) -> dict:
    base = res.get("baselines", {})
    best = max((b["AUC"] for b in base.values()), default=float("nan"))
    return {
        "setting": setting,
        "seed": seed,
        "expid": expid,
        "valid_AUC": res["valid"]["AUC"],
        "test_AUC": res.get("test", {}).get("AUC"),
        "popularity_AUC": base.get("popularity", {}).get("AUC"),
        "logreg_AUC": base.get("logreg", {}).get("AUC"),
        "margin": res["valid"]["AUC"] - best,
        "best_epoch": max(res["history"], key=lambda h: h["monitor"])["epoch"],
        "train_seconds": res.get("train_seconds"),
    }


def _spread(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {(max(values) - min(values)) / 2:.4f}"


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per (setting, model), mean ± half-range over the seeds."""
    lines = [
        "| setting | model | seeds | valid AUC | best baseline (logreg / popularity) | margin | train s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    keys = dict.fromkeys((r["setting"], r["expid"]) for r in rows)
    for setting, expid in keys:
        rs = [r for r in rows if r["setting"] == setting and r["expid"] == expid]
        lines.append(
            f"| {setting} | {expid} | {len(rs)} | {_spread([r['valid_AUC'] for r in rs])} | "
            f"{_spread([r['logreg_AUC'] for r in rs])} / "
            f"{_spread([r['popularity_AUC'] for r in rs])} | "
            f"{_spread([r['margin'] for r in rs])} | "
            f"{sum(r['train_seconds'] or 0 for r in rs) / len(rs):.0f} |"
        )
    return "\n".join(lines)


def plot_study(rows: list[dict], path: Path) -> None:
    """Valid AUC of every (setting, model) beside its two baselines: bars at the mean over
    the seeds, whiskers at the lowest and highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r["setting"], r["expid"]) for r in rows))
    series = [("model", "valid_AUC"), ("logreg", "logreg_AUC"), ("popularity", "popularity_AUC")]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.27
    for j, (label, col) in enumerate(series):
        means, lo, hi = [], [], []
        for key in keys:
            vals = [r[col] for r in rows if (r["setting"], r["expid"]) == key]
            m = sum(vals) / len(vals)
            means.append(m)
            lo.append(m - min(vals))
            hi.append(max(vals) - m)
        xs = [i + (j - 1) * width for i in range(len(keys))]
        ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=label)
    names = [f"{s}\n{e.replace('_demo', '')}" for s, e in keys]
    ax.set_xticks(range(len(keys)), names, fontsize=8)
    ax.set_ylim(0.6, max(r["valid_AUC"] for r in rows) + 0.03)
    ax.set_ylabel("valid AUC")
    ax.set_title("valid AUC, models and baselines (whiskers: the seeds' range)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[2025, 2026, 2027])
    p.add_argument(
        "--contrast-seeds",
        nargs="+",
        type=int,
        default=[2025],
        help="seeds for the settings other than default (default: 2025)",
    )
    p.add_argument("--expids", nargs="+", default=list(EXPIDS), help="config/demo experiments")
    p.add_argument(
        "--contrast-expids",
        nargs="+",
        default=["Transformer_DCN_TA_demo"],
        help="experiments run on the settings other than default",
    )
    p.add_argument("--work", default=str(ROOT / "data" / "study"), help="data and runs folder")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.settings:
        seeds = args.seeds if setting == "default" else args.contrast_seeds
        expids = args.expids if setting == "default" else args.contrast_expids
        for seed in seeds:
            data = prepare_data(work, setting, seed)
            for expid in expids:
                res = run_one(work, data, setting, expid)
                rows.append(row_of(setting, seed, expid, res))
                r = rows[-1]
                print(
                    f"[run] {setting:<13} seed {seed} {expid:<24} valid AUC "
                    f"{r['valid_AUC']:.4f} | logreg {r['logreg_AUC']:.4f} popularity "
                    f"{r['popularity_AUC']:.4f} | margin {r['margin']:+.4f}",
                    flush=True,
                )
                (work / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(summary_table(rows))
    plot_study(rows, work / "study.png")
    print(f"\nwritten: {work / 'study.json'}, {work / 'study.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
