#!/usr/bin/env python
"""Side by side: gradient clipping as ``clip_grad_norm_`` then the fused optimizer step,
against the clipping inside the fused kernel (``grad_scale``, what ``TrainStep`` does for
fused adam/adamw/sgd), on the parameters of a shipped MMCTR model (268M), CPU.

    python scripts/bench_clip.py                 # Transformer_DCN_rank1, 5 repeats
    python scripts/bench_clip.py --repeats 9 --max-norm 1.0

Only the window's end is timed: norm, clipping and optimizer step, on the same gradients
(restored before every repeat, untimed), the two ways in turns. Prints the seconds of each
repeat, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_data as bd  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--expid", default="rank1", choices=sorted(bench.EXPERIMENTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-norm", type=float, default=1e-3, help="small: clipping bites")
    args = ap.parse_args(argv)

    import torch
    from torch import nn

    from mmctr.data.dataset import read_item_table
    from mmctr.models import build_model
    from mmctr.training.guard import DivergenceGuard
    from mmctr.training.step import clip_divisor
    from mmctr.training.trainer import make_optimizer
    from mmctr.utils import keep_freed_memory

    keep_freed_memory()
    data_dir = bd.ensure_data("demo", None, quiet=True)
    cfg = bd.bench_config(bench.EXPERIMENTS[args.expid], data_dir)
    items = read_item_table(cfg.dataset.item_info, cfg.dataset)
    model = build_model(cfg.model, cfg.dataset, items)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    t = cfg.trainer
    opt = make_optimizer(t.optimizer, params, t.learning_rate, t.weight_decay)
    gen = torch.Generator().manual_seed(0)
    saved = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]

    guard = DivergenceGuard(opt, torch.device("cpu"))  # the trainer's guarded step

    def separate() -> None:
        guard.step(nn.utils.clip_grad_norm_(params, args.max_norm))

    def folded() -> None:  # TrainStep's way with a fused optimizer
        norm = nn.utils.get_total_norm([p.grad for p in params])
        guard.step(norm, grad_scale=clip_divisor(norm, args.max_norm))

    ways = {"clip_grad_norm_ + step": separate, "inside the fused kernel": folded}
    secs: dict[str, list[float]] = {k: [] for k in ways}
    bd.log(
        f"{cfg.expid}: {n:,} parameters, {type(opt).__name__} (fused: "
        f"{opt.param_groups[0].get('fused')}), max_norm {args.max_norm}, 1 warm-up each"
    )
    for rep in range(args.repeats + 1):
        order = list(ways) if rep % 2 == 0 else list(ways)[::-1]
        for name in order:
            for p, g in zip(params, saved):
                p.grad = g.clone()
            start = time.perf_counter()
            ways[name]()
            sec = time.perf_counter() - start
            if rep:  # repeat 0 warms up
                secs[name].append(sec)
                bd.log(f"repeat {rep}: {name}: {sec * 1e3:.1f} ms")
    med = {k: bd.median(v) for k, v in secs.items()}
    a, b = med["clip_grad_norm_ + step"], med["inside the fused kernel"]
    bd.log(
        f"median: clip_grad_norm_ + step {a * 1e3:.1f} ms, inside the fused kernel "
        f"{b * 1e3:.1f} ms: {a / b:.2f}x, {(a - b) * 1e3:.1f} ms saved per optimizer step"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
