#!/usr/bin/env python
"""Side by side: the cross network skipping the readout's padding columns (the CPU default)
against the dense cross network, on the shipped MMCTR configs and the demo preset's histories.

    python scripts/bench_cross.py                       # seed and rank-1, CPU
    python scripts/bench_cross.py --expid seed --repeats 5 --no-steps

Two measurements, each interleaved (the variants take turns within every repeat):
1. the cross network alone, forward + backward, on inputs whose padding blocks follow the
   split's real history lengths, for several ``group_overhead_rows`` settings;
2. whole training steps (:class:`bench.StepRunner`, the trainer's step): one model whose
   ``skip_zeros`` is switched on and off (:func:`bench.toggled`: the same rows for both, the
   order alternating between repeats, both warmed up; two separate models measured
   0.93x-1.39x apart run to run on this machine).
Prints samples/s per repeat, the medians, their ratios, and the share of the dense cross
network's multiply-adds that skipping leaves.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_data as bd  # noqa: E402


def readout_zeros(lengths, k: int, d_model: int):
    """Zero columns of each row's readout: (k - min(n, k)) blocks of ``d_model``."""
    import torch

    n = torch.as_tensor(lengths, dtype=torch.long)
    return (k - n.clamp(max=k)) * d_model


def product_share(zeros, width: int, start: int, overhead_rows: int) -> float:
    """Multiply-adds of the skipping cross network over those of the dense one, for a batch."""
    from mmctr.models.padded_cross import kept_ranges, row_groups

    done = 0
    for rows, z in row_groups(zeros, width, overhead_rows):
        kept = sum(b - a for a, b in kept_ranges(width, start, z))
        done += len(rows) * kept * kept
    return done / (len(zeros) * width * width)


def cross_alone(name, cfg, model, split, repeats: int, overhead_rows: list[int]) -> dict:
    """Forward + backward of ``model.cross`` alone: dense against skipping."""
    import numpy as np
    import torch

    b = cfg.trainer.batch_size
    k, d = model.sequence.first_k_cols, model.sequence.d_model
    width = model.input_width
    start = model.side_encoder.out_dim + model.item_encoder.out_dim
    rng = np.random.default_rng(0)
    lengths = split.seq_len[rng.choice(len(split.seq_len), b, replace=False)]
    zeros = readout_zeros(lengths, k, d)
    x0 = torch.randn(b, width)
    x0[torch.arange(width).expand(b, width) - start < zeros[:, None]] = 0.0  # the pad blocks
    x0[:, :start] = torch.randn(b, start)
    cross = model.cross

    def run(skip: bool, overhead_rows: int) -> float:
        cross.skip_zeros, cross.group_overhead_rows = skip, overhead_rows
        x = x0.clone().requires_grad_(True)
        t = time.perf_counter()
        cross(x, zeros, start).sum().backward()
        return time.perf_counter() - t

    variants = {"dense": (False, 1)} | {
        f"skip, overhead {m} rows": (True, m) for m in overhead_rows
    }
    for skip, m in variants.values():
        run(skip, m)  # warm-up
    secs = {label: [] for label in variants}
    for rep in range(repeats):
        for label, (skip, m) in variants.items():
            secs[label].append(run(skip, m))
            bd.log(f"{name} cross alone, repeat {rep + 1}: {label}: {secs[label][-1]:.3f} s")
    cross.skip_zeros, cross.group_overhead_rows = None, type(cross).group_overhead_rows
    dense = statistics.median(secs["dense"])
    out = {"batch_size": b, "width": width}
    for label, (skip, m) in variants.items():
        sec = statistics.median(secs[label])
        share = product_share(zeros, width, start, m) if skip else 1.0
        out[label] = {"seconds": sec, "speedup": dense / sec, "product_share": share}
        bd.log(
            f"{name} cross alone: {label}: {sec:.3f} s, {dense / sec:.2f}x, {share:.1%} of the products"
        )
    return out


def whole_steps(name, cfg, items, split, steps: int, repeats: int) -> dict:
    import torch

    runner = bench.StepRunner(cfg, items, split, torch.device("cpu"), False)
    cross = runner.model.cross
    modes = {
        label: functools.partial(setattr, cross, "skip_zeros", skip)
        for label, skip in (("skip", True), ("dense", False))
    }
    rates = bench.toggled(name, runner, modes, steps, repeats, cfg.trainer.seed)
    cross.skip_zeros = None
    runner.close()
    out = {
        label: {"samples_per_s": statistics.median(v), "per_repeat": v}
        for label, v in rates.items()
    }
    out["ratio"] = out["skip"]["samples_per_s"] / out["dense"]["samples_per_s"]
    bd.log(
        f"{name} training step: skip {out['skip']['samples_per_s']:.1f} samples/s, dense "
        f"{out['dense']['samples_per_s']:.1f}: {out['ratio']:.2f}x"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from mmctr.models import build_model

    ap = bench.side_by_side_parser(__doc__)
    ap.add_argument(
        "--overhead-rows",
        type=int,
        nargs="+",
        default=[16, 64, 256],
        help="row_groups' fixed cost of a group, in rows (default: %(default)s)",
    )
    ap.add_argument("--no-steps", action="store_true", help="the cross network alone only")
    ap.add_argument("--no-alone", action="store_true", help="whole training steps only")
    args = ap.parse_args(argv)
    data_dir = bd.ensure_data(args.preset, None)
    for name in args.expid or ["seed", "rank1"]:
        cfg = bd.bench_config(bench.EXPERIMENTS[name], data_dir, ["bf16=false"])
        items, splits, _ = bd.load_data(cfg, ("train",))
        if not args.no_alone:
            torch.manual_seed(0)
            model = build_model(cfg.model, cfg.dataset, items)
            cross_alone(name, cfg, model, splits["train"], args.repeats, args.overhead_rows)
            del model
        if not args.no_steps:
            steps = args.steps or (1 if name == "seed" else 4)
            whole_steps(name, cfg, items, splits["train"], steps, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
