#!/usr/bin/env python
"""Side by side: the trainer's step with glibc malloc's defaults against malloc keeping freed
memory (:func:`mmctr.utils.keep_freed_memory`, what ``train()`` sets), on the shipped MMCTR
configs and the demo preset, CPU.

    python scripts/bench_malloc.py                  # seed and rank-1, 2 rounds
    python scripts/bench_malloc.py --expid seed --rounds 1

The allocator is process-wide, so each measurement is a fresh process (the model built, two
warm-up steps, then ``--repeats`` timed repeats); the two settings take turns, round by round.
Prints samples/s per repeat, the medians, their ratio and each process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import bench_data as bd  # noqa: E402

SETTINGS = {"default": {"MMCTR_MALLOC": "default"}, "keep freed": {}}


def child(name: str, preset: str, steps: int, repeats: int) -> dict:
    import resource

    import torch

    from mmctr.utils import keep_freed_memory

    how = keep_freed_memory()
    data_dir = bd.ensure_data(preset, None, quiet=True)
    cfg = bd.bench_config(bd.LOADER_EXPID, data_dir)
    items, splits, _ = bd.load_data(cfg, ("train",))
    tcfg = bd.bench_config(bench.EXPERIMENTS[name], data_dir)
    runner = bench.StepRunner(tcfg, items, splits["train"], torch.device("cpu"), False)
    runner.run_steps(2)
    rates = []
    for _ in range(repeats):
        n, sec = runner.run_steps(steps)
        rates.append(n / sec)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"malloc": how, "rates": rates, "peak_rss_gb": rss}


def main(argv: list[str] | None = None) -> int:
    ap = bench.side_by_side_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=2, help="turns of the two settings")
    ap.add_argument("--json", help="also write the results as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.steps, args.repeats)))
        return 0
    names = args.expid or ["seed", "rank1"]
    out: dict = {}
    for name in names:
        steps = args.steps or (1 if name == "seed" else 4)
        runs: dict[str, list[dict]] = {label: [] for label in SETTINGS}
        for rnd in range(args.rounds):
            for label, env in SETTINGS.items():
                cmd = [sys.executable, __file__, "--child", name, "--preset", args.preset]
                cmd += ["--steps", str(steps), "--repeats", str(args.repeats)]
                full_env = {k: v for k, v in os.environ.items() if k != "MMCTR_MALLOC"} | env
                proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
                if proc.returncode:
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"bench_malloc: the {label} child of {name} failed")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[label].append(r)
                rates = ", ".join(f"{x:.1f}" for x in r["rates"])
                bd.log(
                    f"{name} round {rnd + 1}: {label}: {rates} samples/s, "
                    f"peak RSS {r['peak_rss_gb']:.2f} GB ({r['malloc']})"
                )
        res = {}
        for label, rs in runs.items():
            res[label] = {
                "samples_per_s": statistics.median(x for r in rs for x in r["rates"]),
                "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
                "malloc": rs[0]["malloc"],
            }
        res["ratio"] = res["keep freed"]["samples_per_s"] / res["default"]["samples_per_s"]
        out[name] = res
        bd.log(
            f"{name}: keep freed {res['keep freed']['samples_per_s']:.1f} samples/s "
            f"(peak RSS {res['keep freed']['peak_rss_gb']:.2f} GB), default "
            f"{res['default']['samples_per_s']:.1f} ({res['default']['peak_rss_gb']:.2f} GB): "
            f"{res['ratio']:.2f}x"
        )
    if args.json:
        bd.write_json(Path(args.json), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
