"""``python run_param_tuner.py --config config/tuner/<name>.yaml --gpu 0 1 [--max-parallel N] [--rerun] [--dry-run]``

Expand a FuxiCTR tuner file into experiment ids ``<base_expid>_<NNN>_<hash8>``, write them to
``config/tuner/<name>/`` (next to the tuner file), run each with run_expid.py (one at a time
per listed device; ``--gpu -1`` is the CPU), and tabulate the results in
``<model_root>/<name>.csv``. Safe to rerun: finished experiments are skipped, interrupted
ones resume from their last.pt. Exit code 1 when an experiment failed.
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_param_tuner.py", description=__doc__.split("\n\n")[1])
    p.add_argument(
        "--config", required=True, metavar="FILE", help="tuner file (config/tuner/<name>.yaml)"
    )
    p.add_argument(
        "--gpu",
        type=int,
        nargs="+",
        default=[-1],
        metavar="N",
        help="devices to run on, one experiment at a time each; -1 = CPU (default)",
    )
    p.add_argument(
        "--max-parallel",
        type=int,
        default=None,
        metavar="N",
        help="experiments at a time on each listed device (default 1), e.g. --gpu -1 "
        "--max-parallel 2 for two CPU runs side by side",
    )
    p.add_argument(
        "--rerun",
        action="store_true",
        help="run every experiment again from the start (an old metrics.json is kept as "
        "metrics.prev.json)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="write the configs and list the expids; run nothing"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_parallel is not None and args.max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    from mmctr.tuning import run_tuner

    rows = run_tuner(
        args.config,
        gpus=args.gpu,
        max_parallel=args.max_parallel,
        rerun=args.rerun,
        dry_run=args.dry_run,
    )
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def entry() -> None:
    run_cli(main)
