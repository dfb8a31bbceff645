"""``python prediction.py --config DIR --expid ID --gpu N [--column Task2] [--out submission/]
[--test-data PATH] [--checkpoint PATH]``

Score the test set with the best checkpoint of the experiment and write ``<out>/prediction.csv``
(header ``ID,<column>``, ID = test row index in file order) and ``<out>/<expid>.zip``.
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import add_experiment_args, positive_int, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prediction.py", description="Write the submission CSV and zip."
    )
    add_experiment_args(p)
    p.add_argument(
        "--column",
        default="Task2",
        choices=["Task1", "Task2", "Task1&2"],
        help="submission column name (the scorer reads it to know the task)",
    )
    p.add_argument("--out", default="submission", help="output folder (default: submission/)")
    p.add_argument(
        "--test-data", default=None, help="test parquet (default: the config's test_data)"
    )
    p.add_argument("--checkpoint", default=None, help="model.pt to use (default: the run folder's)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="rows per scoring batch (default: max(batch_size, 4096))",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines (on a terminal a bar, else a line every ~20 s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmctr.prediction import predict_submission

    s = predict_submission(
        args.config,
        args.expid,
        gpu=args.gpu,
        column=args.column,
        out_dir=args.out,
        test_data=args.test_data,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        overrides=args.override,
        threads=args.threads,
        allow_hash_mismatch=args.allow_hash_mismatch,
        progress=not args.no_progress,
    )
    for note in s["notices"]:
        print(f"notice: {note}")
    if s.get("threads"):
        print(s["threads"])
    print(
        f"scored {s['rows']:,} test rows in {s['seconds']:.1f}s, mean prediction {s['mean_prediction']:.4f}"
    )
    if "test_AUC" in s:
        print(f"test AUC (labels present in this test file): {s['test_AUC']:.5f}")
    print(f"checkpoint: {s['checkpoint']}")
    print(f"wrote {s['csv']}")
    print(f"wrote {s['zip']}")
    return 0


def entry() -> None:
    run_cli(main)
