#!/usr/bin/env python
"""Training samples/s with 1 and 2 torchrun processes, side by side in one run.

    python scripts/bench.py ddp [--preset tiny] [--epochs 3] [--gpu -1] [--json PATH]

Both runs train the same tiny Transformer_DCN on the same generated data through the real
entry point (``torchrun --standalone --nproc_per_node=N run_expid.py ...``), with the same
global batch (the per-rank batch is divided by N). samples/s = rows x epochs / training time,
read from the run's metrics.json. On a 2-core CPU two processes cannot be faster (each gets one
core); the point there is correctness. With ``--gpu 0`` on a CUDA machine each rank uses its
own GPU (NCCL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_harness import REPO as ROOT
from bench_harness import write_tiny_experiment as write_experiment

STDERR_TAIL = 4000  # characters of a failed child's stderr shown


class ChildFailed(RuntimeError):
    """A torchrun child exited non-zero; the message carries its stderr tail."""


def set_item_vocab(cfg_dir: Path, item_info: Path) -> int:
    """Point ``item_id``'s vocab_size at the rows of ``item_info`` (padding row 0 included).

    ``write_experiment`` writes the tiny preset's 300 items; every other preset has more item
    ids, which the data contract rejects. Returns the vocab_size written.
    """
    import pyarrow.parquet as pq
    import yaml

    n_items = pq.read_metadata(item_info).num_rows
    path = cfg_dir / "dataset_config.yaml"
    cfg = yaml.safe_load(path.read_text())
    found = 0
    for block in cfg.values():
        for feat in block["feature_cols"]:
            if feat["name"] == "item_id":
                feat["vocab_size"] = n_items
                found += 1
    if not found:
        raise ValueError(f"{path}: no item_id feature to size")
    path.write_text(yaml.safe_dump(cfg))
    return n_items


def run(nproc: int, cfg_dir: Path, expid: str, gpu: int, workdir: Path) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc)),
        "OMP_WAIT_POLICY": "PASSIVE",  # spinning threads distort timings on a shared CPU
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(ROOT / "run_expid.py"),
        "--config",
        str(cfg_dir),
        "--expid",
        expid,
        "--gpu",
        str(gpu),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "")[-STDERR_TAIL:]
        raise ChildFailed(
            f"torchrun with {nproc} process(es) exited with status {proc.returncode}\n"
            f"command: {' '.join(cmd)}\n--- stderr (last {STDERR_TAIL} characters) ---\n{tail}"
        )
    return json.loads((workdir / "ckpt" / "tiny" / expid / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.py ddp", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256, help="global batch")
    p.add_argument("--gpu", type=int, default=-1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.batch_size < 2:
        p.error("--batch-size must be at least 2 (it is split over 2 processes)")
    from mmctr.data.demo import generate

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        info = generate(tmp / "data", preset=args.preset, seed=1, images=False)
        rows = info["splits"]["train"]["rows"]
        for nproc in (1, 2):
            work = tmp / f"n{nproc}"
            cfg_dir, expid = write_experiment(
                work,
                tmp / "data",
                epochs=args.epochs,
                batch_size=args.batch_size // nproc,
                early_stop_patience=args.epochs + 1,
            )
            set_item_vocab(cfg_dir, Path(info["paths"]["item_info"]))
            try:
                m = run(nproc, cfg_dir, expid, args.gpu, work)
            except ChildFailed as exc:
                print(f"bench_ddp: {exc}", file=sys.stderr)
                print(
                    f"bench_ddp: FAILED (preset {args.preset}, {nproc} process(es)); no results",
                    file=sys.stderr,
                )
                return 1
            loop = sum(e["loop_seconds"] for e in m["epoch_seconds"])  # training batches only
            out[f"procs_{nproc}"] = {
                "samples_per_s": rows * m["epochs"] / loop,
                "train_seconds": loop,
                "train_call_seconds": m["train_seconds"],
                "valid_AUC": m["valid"]["AUC"],
            }
    device = "cpu" if args.gpu < 0 else f"cuda (gpu {args.gpu}+)"
    print(
        f"torchrun training on {device}, preset {args.preset}, {args.epochs} epochs, global batch {args.batch_size}"
    )
    print(f"{'processes':<10}{'samples/s':>12}{'train s':>10}{'valid AUC':>11}")
    for n in (1, 2):
        r = out[f"procs_{n}"]
        print(
            f"{n:<10}{r['samples_per_s']:>12.0f}{r['train_seconds']:>10.1f}{r['valid_AUC']:>11.4f}"
        )
    ratio = out["procs_2"]["samples_per_s"] / out["procs_1"]["samples_per_s"]
    print(f"2 vs 1 process: {ratio:.2f}x")
    out["ratio_2_vs_1"] = ratio
    if args.json:
        from mmctr.atomic import atomic_write_text  # creates missing parent folders

        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
