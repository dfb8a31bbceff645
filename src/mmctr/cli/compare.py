"""``python -m mmctr.compare ROOT [--csv FILE] [--plot FILE]`` (or ``python compare_runs.py``)

Compare every run under ROOT (e.g. checkpoints/ or checkpoints/demo): one table sorted by the
monitor metric (expid, model, the hyper-parameters that differ between the runs, best valid
AUC / logloss / gAUC, test AUC, epochs, wall time, samples/s, finished or interrupted), the
same table as CSV, and one plot overlaying the valid-AUC curves. Folders that are not runs, or
half-written ones, are listed as such.
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmctr.compare", description=__doc__.split("\n\n")[1]
    )
    p.add_argument("root", metavar="ROOT", help="folder to search for run folders (any depth)")
    p.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="where to write the table (default ROOT/runs.csv)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="where to draw the valid-AUC curves (default ROOT/runs_valid_auc.png)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmctr.compare import compare

    out = compare(args.root, csv_path=args.csv, plot_path=args.plot)
    n_runs = sum(1 for r in out["runs"] if r.is_run)
    if not n_runs:
        raise UserError(
            f"no run folders under {args.root} (a run folder holds config.yaml, "
            "metrics.json or last.pt)"
        )
    print(f"{n_runs} run(s) under {args.root}, best first:")
    print(out["table"])
    for folder, why in out["not_runs"]:
        print(f"skipped {folder}: {why}")
    print(f"wrote {out['csv']}")
    if out["plot"]:
        print(f"wrote {out['plot']}")
    return 0


def entry() -> None:
    run_cli(main)
