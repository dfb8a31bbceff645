#!/usr/bin/env python
"""The whole pipeline on built-in demo data: ``make demo`` (or ``python scripts/run_demo.py``).

1. generate the demo dataset (``scripts/make_demo_data.py --preset demo``) into data/demo/
   unless it is already there for this seed;
2. stage 1: build a small randomly initialised CLIP (pretrained weights cannot be downloaded
   here) and recompute ``item_emb_d128`` from the demo images with ``generate_embeddings.py``
   (written to ``data/demo/item_info.parquet``; the generator's own embedding is kept as
   ``item_info.orig.parquet``);
3. stage 2: train the default demo experiment (config/demo, Transformer_DCN_TA_demo) and
   its simple baselines (popularity, logistic regression);
4. predict the test split into submission/demo/;
5. print valid/test AUC next to the oracle AUC (the AUC of the true click probabilities the
   labels were drawn from), the ceiling of what the features reveal
   (``scripts/demo_ceiling.py``) and the path of every output.

Idempotent: a rerun reuses the data, the CLIP, the cached image features and a finished run.
Use ``--retrain`` to train again, ``--expid`` for another demo experiment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def oracle_aucs(data_dir: Path) -> dict[str, float]:
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    oracle = pq.read_table(data_dir / "oracle.parquet").to_pandas()
    out = {}
    for split in ("valid", "test"):
        o = oracle[oracle["split"] == split].sort_values("row")
        labels = (
            pq.read_table(data_dir / f"{split}.parquet", columns=["label"]).column(0).to_numpy()
        )
        out[split] = float(roc_auc_score(labels[o["row"].to_numpy()], o["p_true"].to_numpy()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--expid",
        default="Transformer_DCN_TA_demo",
        help="demo experiment to train (a block of --config's model_config.yaml)",
    )
    p.add_argument("--config", default="config/demo", help="config folder of the demo")
    p.add_argument("--data", default="data/demo", help="where the demo dataset is generated")
    p.add_argument("--seed", type=int, default=2025, help="seed of the demo data generator")
    p.add_argument(
        "--retrain", action="store_true", help="train again even if a finished run exists"
    )
    p.add_argument(
        "--skip-embeddings",
        action="store_true",
        help="skip stage 1 and train on the generator's item_emb_d128",
    )
    p.add_argument("--gpu", type=int, default=-1, help="CUDA device index; -1 = CPU")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars or progress lines (on a terminal a bar, else a line every ~20 s)",
    )
    args = p.parse_args(argv)
    from mmctr.runtime import flush_denormals

    flush_denormals()  # before any torch op starts the thread pool, as train() does
    progress = not args.no_progress
    t_start = time.perf_counter()
    data_dir = Path(args.data)
    outputs: dict[str, str] = {}
    missing: list[str] = []

    # 1. data -------------------------------------------------------------------------
    banner("1/4 demo data")
    marker = data_dir / ".complete.json"
    want = {"preset": "demo", "seed": args.seed}
    if marker.is_file() and json.loads(marker.read_text()).get("generate") == want:
        print(f"reusing {data_dir} (preset demo, seed {args.seed})")
    else:
        from mmctr.data.demo import generate

        if data_dir.exists():
            shutil.rmtree(data_dir)
        summary = generate(data_dir, preset="demo", seed=args.seed, images=True)
        marker.write_text(json.dumps({"generate": want, "summary": summary}, default=str))
    outputs["data"] = str(data_dir)

    # 2. embeddings -------------------------------------------------------------------
    banner("2/4 stage 1: image embeddings (random-weight CLIP)")
    original = data_dir / "item_info.orig.parquet"
    if not original.exists():
        shutil.copy2(data_dir / "item_info.parquet", original)
    if args.skip_embeddings:
        print("skipped (--skip-embeddings): training on the generator's item_emb_d128")
        shutil.copy2(original, data_dir / "item_info.parquet")
    else:
        try:
            from mmctr.embedding.encoder import build_random_clip
            from mmctr.embedding.pipeline import generate_embeddings
        except ImportError as exc:  # the stage is not built yet
            missing.append(f"stage 1 (embeddings): {exc}")
            print(f"MISSING: {missing[-1]}; training on the generator's item_emb_d128")
        else:
            clip_dir = ROOT / "data" / "demo_clip"
            if not (clip_dir / "config.json").is_file():
                build_random_clip(clip_dir, arch="tiny", seed=0)
            summary = generate_embeddings(
                item_info=original,
                image_dir=data_dir / "item_images",
                model=str(clip_dir),
                out=data_dir / "item_info.parquet",
                gpu=[args.gpu] if args.gpu >= 0 else [-1],
                progress=progress,
            )
            from mmctr.embedding.pipeline import summary_lines

            for line in summary_lines(summary):
                print(line)
            summary_path = data_dir / "embedding_summary.json"
            summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
            print(f"full summary: {summary_path}")
            outputs["embedding summary"] = str(summary_path)
            outputs["embedding model"] = str(clip_dir)
            outputs["item_info with CLIP embeddings"] = str(data_dir / "item_info.parquet")

    # 3. training ---------------------------------------------------------------------
    banner(f"3/4 stage 2: train {args.expid}")
    from mmctr.config import load_config
    from mmctr.training.trainer import run_dir_of, train

    cfg = load_config(args.config, args.expid)
    run_dir = run_dir_of(cfg)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file() and not args.retrain:
        print(f"reusing finished run {run_dir} (--retrain to train again)")
        results = json.loads(metrics_path.read_text())
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        results = train(cfg, gpu=args.gpu, progress=progress)
    for name in ("model.pt", "last.pt", "train.log", "config.yaml", "metrics.json", "curves.png"):
        outputs[f"run: {name}"] = str(run_dir / name)
    outputs["run: TensorBoard events"] = f"{run_dir} (tensorboard --logdir {run_dir.parent})"

    # 4. prediction -------------------------------------------------------------------
    banner("4/4 prediction")
    from mmctr.prediction import predict_submission

    sub = predict_submission(
        args.config,
        args.expid,
        gpu=args.gpu,
        out_dir=ROOT / "submission" / "demo",
        progress=progress,
    )
    outputs["submission csv"] = sub["csv"]
    outputs["submission zip"] = sub["zip"]

    # summary -------------------------------------------------------------------------
    oracle = oracle_aucs(data_dir)
    banner("results")
    v, t = results["valid"], results.get("test", {})
    print(f"{'split':<8}{'model AUC':>12}{'oracle AUC':>12}{'gap':>9}")
    print(
        f"{'valid':<8}{v['AUC']:>12.5f}{oracle['valid']:>12.5f}{oracle['valid'] - v['AUC']:>9.4f}"
    )
    if t:
        print(
            f"{'test':<8}{t['AUC']:>12.5f}{oracle['test']:>12.5f}{oracle['test'] - t['AUC']:>9.4f}"
        )
    baselines = results.get("baselines") or {}
    if baselines:  # fitted on the same train split, scored on the same valid split
        best = max(baselines, key=lambda k: baselines[k]["AUC"])
        margin = v["AUC"] - baselines[best]["AUC"]
        listed = " | ".join(f"{k} {b['AUC']:.5f}" for k, b in baselines.items())
        verdict = "beats" if margin > 0 else "DOES NOT beat"
        print(
            f"baselines, valid AUC: {listed}; the model {verdict} the best ({best}) "
            f"by {margin:+.5f}"
        )
    if "cold_AUC" in v:
        print(
            f"valid cold-item rows ({v['cold_rows']}): AUC {v['cold_AUC']:.5f}; warm rows: {v['warm_AUC']:.5f}"
        )
    print(f"submission test AUC: {sub.get('test_AUC', float('nan')):.5f} ({sub['rows']} rows)")
    try:  # what the features can reveal of the oracle's latent content (scripts/demo_ceiling.py)
        from demo_ceiling import ceilings  # scripts/ is on sys.path: this file is run

        c = ceilings(data_dir, data_dir / "item_info.parquet", "item_emb_d128", "demo", args.seed)
        print(
            f"valid ceiling with the exact click formula and what the features reveal of the "
            f"latent content: {c['embedding + topic']:.5f} (embedding + topic), "
            f"{c['embedding']:.5f} (embedding alone); see scripts/demo_ceiling.py"
        )
    except Exception as exc:  # informative only: never fail the demo on it
        print(f"(ceiling not computed: {type(exc).__name__}: {exc})")
    print("\noutputs:")
    for k, path in outputs.items():
        print(f"  {k:<32} {path}")
    if missing:
        print("\nnot run (not built yet):")
        for m in missing:
            print(f"  - {m}")
    print(f"\ncompare the runs of the demo: python -m mmctr.compare {run_dir.parent}")
    print(f"\ndone in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
