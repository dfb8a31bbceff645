#!/usr/bin/env python
"""Side by side: the sequence encoder's length chunks from width 1 (the default) against
chunks from ``first_k_cols`` (before 2026-12-01): one model switched between the two.

    python scripts/bench_chunks.py                      # seed and rank-1, demo preset, CPU
    python scripts/bench_chunks.py --expid rank1 --steps 4 --repeats 5

One model is switched between the settings (:func:`bench.toggled`: the same rows for both,
the order alternating between repeats, so that a machine whose speed drifts affects both
alike; two models side by side drift apart on this machine). Prints samples/s per repeat, the
medians, their ratio, and the share of untrimmed history tokens each setting computes.
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_data as bd  # noqa: E402


def token_share(split, batch_size: int, min_width: int, batches: int = 200, seed: int = 0):
    """Share of the untrimmed (B x width) tokens the chunked encoder computes."""
    import numpy as np

    lens = split.seq_len.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(lens))
    full = done = 0
    for s in range(0, min(len(lens), batches * batch_size), batch_size):
        lb = lens[perm[s : s + batch_size]]
        full += len(lb) * split.seq_width
        chunk = np.ceil(np.log2(np.maximum(lb / min_width, 1))).astype(int)
        for c in np.unique(chunk):
            rows = chunk == c
            done += rows.sum() * max(min_width, lb[rows].max())
    return done / full


def compare(name: str, data_dir: Path, steps: int, repeats: int) -> dict:
    import torch

    cfg = bd.bench_config(bench.EXPERIMENTS[name], data_dir, ["bf16=false"])
    items, splits, _ = bd.load_data(cfg, ("train",))
    split = splits["train"]
    k = int(cfg.model.first_k_cols)
    widths = {"from 1": 1, f"from k={k}": k}
    runner = bench.StepRunner(cfg, items, split, torch.device("cpu"), False, sequence_chunks=True)
    seq = runner.model.sequence
    modes = {
        label: functools.partial(setattr, seq, "min_chunk_width", m) for label, m in widths.items()
    }
    rates = bench.toggled(name, runner, modes, steps, repeats, cfg.trainer.seed)
    runner.close()
    out = {"expid": cfg.expid, "batch_size": cfg.trainer.batch_size, "steps": steps}
    for label, m in widths.items():
        out[label] = {
            "samples_per_s": statistics.median(rates[label]),
            "per_repeat": rates[label],
            "token_share": token_share(split, cfg.trainer.batch_size, m),
        }
    a, b = out["from 1"]["samples_per_s"], out[f"from k={k}"]["samples_per_s"]
    out["ratio"] = a / b
    bd.log(
        f"{name}: chunks from 1 {a:.1f} samples/s ({out['from 1']['token_share']:.1%} of the "
        f"tokens), from k={k} {b:.1f} ({out[f'from k={k}']['token_share']:.1%}): {a / b:.2f}x"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = bench.side_by_side_parser(__doc__)
    args = ap.parse_args(argv)
    data_dir = bd.ensure_data(args.preset, None)
    for name in args.expid or ["seed", "rank1"]:
        steps = args.steps or (1 if name == "seed" else 4)
        compare(name, data_dir, steps, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
