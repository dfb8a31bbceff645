#!/usr/bin/env python
"""Training samples/s with 1 and 2 torchrun processes, side by side in one run.

    python scripts/bench_ddp.py [--preset tiny] [--epochs 3] [--gpu -1] [--json PATH]

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import write_experiment  # noqa: E402  (the same tiny config the tests use)


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
    subprocess.run(cmd, check=True, cwd=workdir, env=env, capture_output=True, text=True)
    return json.loads((workdir / "ckpt" / "tiny" / expid / "metrics.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256, help="global batch")
    p.add_argument("--gpu", type=int, default=-1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
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
            m = run(nproc, cfg_dir, expid, args.gpu, work)
            out[f"procs_{nproc}"] = {
                "samples_per_s": rows * m["epochs"] / m["train_seconds"],
                "train_seconds": m["train_seconds"],
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
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
