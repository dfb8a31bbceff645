#!/usr/bin/env python
"""Train an experiment with one signal removed at a time and print what each one is worth.

    python scripts/ablate.py --config config/demo --expid Transformer_DCN_demo
    python scripts/ablate.py --config config/demo --expid DIN_demo --only full no_history
    python scripts/ablate.py ... --override epochs=2 --out checkpoints/ablation

Variants and how to read the table: src/mmctr/tuning/ablation.py. Finished variants are
reused on a rerun (delete ``--out`` to start over); the table is also written to
``<out>/ablation.json``.
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import run_cli
from mmctr.tuning.ablation import VARIANTS, run_ablation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config folder (FuxiCTR layout)")
    p.add_argument("--expid", required=True, help="the experiment to ablate")
    p.add_argument(
        "--out", default=None, help="folder for the runs (default checkpoints/ablation/<expid>)"
    )
    p.add_argument(
        "--only", nargs="+", choices=VARIANTS, help=f"variants to run (default all: {VARIANTS})"
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one config key in every variant (repeatable)",
    )
    p.add_argument("--gpu", type=int, default=-1, help="GPU index, -1 for the CPU (default)")
    p.add_argument("--progress", action="store_true", help="show a progress bar per epoch")
    args = p.parse_args()
    out = args.out or f"checkpoints/ablation/{args.expid}"
    variants = list(args.only) if args.only else None
    if variants and "full" not in variants:
        variants.insert(0, "full")  # the reference every row is compared with
    run_ablation(args.config, args.expid, out, variants, args.override, args.gpu, args.progress)
    print(f"written: {out}/ablation.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
