"""Generate MicroLens-shaped demo data with a planted, known click probability.

    python scripts/make_demo_data.py --preset demo --out data/demo
    python scripts/make_demo_data.py --preset full --out data/full --no-images
    python scripts/make_demo_data.py --preset tiny --out /tmp/tiny --seed 7 --baseline
    python scripts/make_demo_data.py --out data/long --no-images --history-median 40 --history-sigma 1

Writes train/valid/test/item_info/oracle parquet files (DATA_CONTRACT.md) and, unless
--no-images, item_images/<item_id>.jpg plus item_images_manifest.csv. The generative model is
documented in ``mmctr.data.demo``. ``--baseline`` also fits the logistic regression on
one-hot(item_id) + levels that the planted signal must beat. The knobs (``--history-median``,
``--emb-noise``, ``--topic-rho``, ``--tag-noise``, ``--pop-sigma``, ``--pop-effect``,
``--unseen-user-frac``, ...) change the world's shape and signal strengths
(``mmctr.data.demo.Knobs``); left out, they are the demo data's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from mmctr.data.demo import PRESETS, Knobs, generate, id_levels_baseline_auc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--preset", choices=sorted(PRESETS), default="demo", help="dataset size (default: demo)"
    )
    ap.add_argument("--out", required=True, help="output folder (created if missing)")
    ap.add_argument("--seed", type=int, default=2025, help="random seed (default: 2025)")
    ap.add_argument("--no-images", action="store_true", help="skip item_images/")
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also report the valid AUC of an id+levels-only logistic regression",
    )
    ap.add_argument("--json", action="store_true", help="print the full summary as JSON")
    knobs = ap.add_argument_group("generator knobs (mmctr.data.demo.Knobs; default: the demo's)")
    for f in dataclasses.fields(Knobs):
        knobs.add_argument(
            "--" + f.name.replace("_", "-"),
            type=float,
            default=f.default,
            metavar="X",
            help=f"(default {f.default})",
        )
    args = ap.parse_args(argv)
    try:
        chosen = Knobs(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Knobs)})
    except ValueError as exc:
        ap.error(str(exc))

    summary = generate(
        args.out,
        preset=args.preset,
        seed=args.seed,
        images=not args.no_images,
        progress=True,
        knobs=chosen,
    )
    if args.baseline:
        summary["id_levels_baseline_auc"] = id_levels_baseline_auc(args.out)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    changed = ", ".join(f"{k}={v:g}" for k, v in summary["knobs"].items())
    print(
        f"preset {summary['preset']} (seed {summary['seed']}"
        f"{', ' + changed if changed else ''}) -> {summary['out_dir']}"
    )
    for split, st in summary["splits"].items():
        cold = st.get("cold_target_share")
        cold_txt = f", cold targets {cold:.1%}" if cold is not None else ""
        print(
            f"  {split:5s} {st['rows']:>9,} rows, positives {st['positive_rate']:.1%}, "
            f"oracle AUC {st['oracle_auc']:.4f}{cold_txt}"
        )
    h = summary["history_length"]
    print(
        f"  items {summary['n_items']:,} (row 0 = padding), users {summary['n_users']:,}; "
        f"history length min {h['min']} median {h['median']:g} mean {h['mean']:.2f} max {h['max']}"
    )
    if "images_dir" in summary:
        print(
            f"  images: {summary['images_written']:,} files in {summary['images_dir']} "
            f"({summary['images_missing']} missing, {summary['images_corrupt']} corrupt; "
            f"see {summary['images_manifest']})"
        )
    if "id_levels_baseline_auc" in summary:
        b = summary["id_levels_baseline_auc"]
        print(
            f"  id+levels logistic regression valid AUC {b['best']:.4f} (oracle {b['oracle']:.4f})"
        )
    print(f"  files: {', '.join(summary['paths'].values())}")
    print(
        f"done in {summary['seconds']:.1f}s; oracle valid AUC {summary['oracle_auc']['valid']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
