#!/usr/bin/env python
"""Side by side: the training step under bf16 autocast against fp32, on the shipped MMCTR
configs (or the demo architecture) and the demo preset, CPU.

    python scripts/bench_bf16.py                         # seed and rank-1
    python scripts/bench_bf16.py --expid rank1 --repeats 5
    python scripts/bench_bf16.py --demo-architecture     # config/demo's small model

One model (:class:`bench.StepRunner`, the trainer's step) whose autocast is switched between
repeats (:func:`bench.toggled`: the same rows for both, the order alternating, both warmed
up). Says whether this CPU has native bf16 (AMX or AVX512-BF16); without it bf16 is emulated
and many times slower, which is why ``bf16: auto`` is off there. Prints samples/s per
repeat, the medians and their ratio.
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_data as bd  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import torch

    from mmctr.utils import cpu_supports_bf16

    ap = bench.side_by_side_parser(__doc__)
    ap.add_argument(
        "--demo-architecture", action="store_true", help="config/demo's model, not MMCTR's"
    )
    args = ap.parse_args(argv)
    data_dir = bd.ensure_data(args.preset, None)
    arch = bd.demo_architecture_overrides() if args.demo_architecture else []
    bd.log(f"native bf16 on this CPU: {cpu_supports_bf16()}; architecture: {arch or 'MMCTR'}")
    for name in args.expid or ["seed", "rank1"]:
        cfg = bd.bench_config(bench.EXPERIMENTS[name], data_dir, arch)
        items, splits, _ = bd.load_data(cfg, ("train",))
        runner = bench.StepRunner(cfg, items, splits["train"], torch.device("cpu"), False)
        bench.warm_up(runner, 1, 8)
        modes = {
            label: functools.partial(setattr, runner.train_step, "bf16", on)
            for label, on in (("bf16", True), ("fp32", False))
        }
        steps = args.steps or (1 if name == "seed" else 4)
        rates = bench.toggled(name, runner, modes, steps, args.repeats, cfg.trainer.seed)
        runner.close()
        med = {k: statistics.median(v) for k, v in rates.items()}
        bd.log(
            f"{name} training step (batch {cfg.trainer.batch_size}): bf16 {med['bf16']:.1f} "
            f"samples/s, fp32 {med['fp32']:.1f}: {med['bf16'] / med['fp32']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
