"""``python run_expid.py --config DIR --expid ID --gpu N [--override k=v ...] [--resume] [--check]``

Train one experiment of a FuxiCTR-style config folder. ``--gpu -1`` is the CPU; a GPU that is
not there is an error, never a silent fall-back. ``--check`` validates the config, its data
files and the model's sizes without training. Under ``torchrun --nproc_per_node=N run_expid.py ...`` it trains with
DistributedDataParallel (``--gpu`` >= 0 selects CUDA, each rank on its LOCAL_RANK device).
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import add_experiment_args, overrides_of, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_expid.py", description=__doc__.split("\n\n")[1])
    add_experiment_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument(
        "--check", action="store_true", help="validate config, data and model; do not train"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines, logs only (on a terminal a bar, else a line "
        "every ~20 s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmctr.config import load_config

    cfg = load_config(
        args.config,
        args.expid,
        overrides=overrides_of(args),
        allow_hash_mismatch=args.allow_hash_mismatch,
    )
    for note in cfg.notices:
        print(f"notice: {note}")
    if args.check:
        from mmctr.data.contract import validate_dataset

        validate_dataset(cfg.dataset, group_col=cfg.group_col)
        import torch

        from mmctr.data.dataset import read_item_table
        from mmctr.models import build_model

        items = read_item_table(cfg.dataset.item_info, cfg.dataset)
        with torch.device("meta"):  # the layers check their sizes; no memory, no weights
            build_model(cfg.model, cfg.dataset, items)
        print(f"ok: config {args.config} expid {cfg.expid}, its data files and model are valid")
        return 0
    from mmctr.training.trainer import train

    results = train(cfg, gpu=args.gpu, resume=args.resume, progress=not args.no_progress)
    import os

    from mmctr.training.distributed import launched_by_torchrun

    if launched_by_torchrun() and int(os.environ.get("RANK", 0)) != 0:
        return 0
    v = results["valid"]
    print(
        f"best valid: AUC {v['AUC']:.5f}  logloss {v['logloss']:.5f}  gAUC {v.get('gAUC', float('nan')):.5f}"
    )
    if "test" in results:
        print(
            f"test:       AUC {results['test']['AUC']:.5f}  logloss {results['test']['logloss']:.5f}"
        )
    print(f"run folder: {results['run_dir']}")
    return 0


def entry() -> None:
    run_cli(main)
