#!/usr/bin/env python
"""Side by side: two CPU training runs on one machine, torch's default threads (the old
behaviour) against mmctr's default (``mmctr/threads.py``, what a run without ``num_threads``
now picks).

    python scripts/bench.py threads                 # 15 s timed windows, ~1 minute in all
    python scripts/bench.py threads --seconds 30

For each way in turn: run A starts and keeps training; run B starts beside it (so B picks its
threads while A is busy, as a second experiment started next to a first does), both warm up,
then both train for ``--seconds`` at the same time. The model is the demo architecture
(config/demo Transformer_DCN_demo) at batch 1024 on the tiny preset's data. Prints the threads
each run took, its steps/s, the old and new side by side and their ratio. The numbers depend on
what else the machine runs: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPID = "Transformer_DCN_demo"


def _write_config(folder: Path, data: Path) -> Path:
    """config/demo's Transformer_DCN_demo on the tiny data (the tests' dataset block)."""
    import yaml
    from bench_harness import write_tiny_experiment as write_experiment

    blocks = yaml.safe_load((ROOT / "config" / "demo" / "model_config.yaml").read_text())
    params = {**blocks["Base"], **blocks[EXPID], "dataset_id": "tiny", "bf16": False}
    params.pop("model_root")
    cfg_dir, _ = write_experiment(folder, data, expid=EXPID, **params)
    return cfg_dir


def worker(args: argparse.Namespace) -> int:
    """One run: pick threads (``--mode``), build the model, step until ``go``, then time."""
    import torch

    from mmctr.runtime import flush_denormals

    flush_denormals()  # as train() does
    from mmctr.config import load_config
    from mmctr.data.batching import BatchLoader
    from mmctr.data.dataset import read_item_table, read_split
    from mmctr.models import build_model
    from mmctr.threads import configure_threads
    from mmctr.training.guard import DivergenceGuard
    from mmctr.training.step import TrainStep
    from mmctr.training.trainer import make_optimizer

    if args.mode == "new":
        configure_threads(None)
    threads = torch.get_num_threads()
    cfg = load_config(args.config, EXPID)
    ds, t = cfg.dataset, cfg.trainer
    items = read_item_table(ds.item_info, ds)
    split = read_split(ds.train_data, ds, n_items=items.n_items, max_len=t.max_len)
    device = torch.device("cpu")
    model = build_model(cfg.model, ds, items)
    opt = make_optimizer(t.optimizer, model.parameters(), t.learning_rate, t.weight_decay)
    step = TrainStep(model, opt, DivergenceGuard(opt, device), device, max_gradient_norm=10.0)
    loader = BatchLoader(split, t.batch_size, shuffle=True, seed=1, device=device, min_seq_len=4)
    batches = [b for b in loader if b["label"].shape[0] == t.batch_size]
    go, ready = Path(args.go), Path(args.ready)
    n = 0
    while not go.exists():  # busy until both runs are warm
        step.whole(batches[n % len(batches)])
        n += 1
        if n == 3:
            ready.touch()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < args.seconds:
        step.whole(batches[(n + steps) % len(batches)])
        steps += 1
    seconds = time.perf_counter() - t0
    print(json.dumps({"threads": threads, "steps": steps, "steps_per_s": steps / seconds}))
    return 0


def _pair(mode: str, config: Path, seconds: float, tmp: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    go = tmp / f"go_{mode}"
    procs = []
    for name in ("A", "B"):
        ready = tmp / f"ready_{mode}_{name}"
        cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--config", str(config)]
        cmd += ["--seconds", str(seconds), "--go", str(go), "--ready", str(ready)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
        while not ready.exists():  # B starts once A is training
            if procs[-1].poll() is not None:
                raise RuntimeError(f"worker {name} ({mode}) exited {procs[-1].returncode}")
            time.sleep(0.05)
    go.touch()
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.py threads", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="timed window of each pair")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--go", help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    from mmctr.data.demo import generate
    from mmctr.threads import cpus_available, physical_cores_available

    with tempfile.TemporaryDirectory(prefix="bench_threads_") as name:
        tmp = Path(name)
        generate(tmp / "data", preset="tiny", seed=2025, images=False)
        config = _write_config(tmp / "config", tmp / "data")
        load_before = os.getloadavg()
        results = {mode: _pair(mode, config, args.seconds, tmp) for mode in ("old", "new")}
        load_after = os.getloadavg()
    print(
        f"two training runs side by side ({EXPID}, batch 1024, tiny data), "
        f"{len(cpus_available())} CPU(s) / {physical_cores_available()} physical core(s); "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    print(
        f"{'run':<6}{'old threads':>12}{'old steps/s':>13}{'new threads':>13}{'new steps/s':>13}{'new/old':>9}"
    )
    total = {"old": 0.0, "new": 0.0}
    for i, name in enumerate(("A", "B")):
        o, n = results["old"][i], results["new"][i]
        total["old"] += o["steps_per_s"]
        total["new"] += n["steps_per_s"]
        print(
            f"{name:<6}{o['threads']:>12}{o['steps_per_s']:>13.2f}{n['threads']:>13}"
            f"{n['steps_per_s']:>13.2f}{n['steps_per_s'] / o['steps_per_s']:>8.2f}x"
        )
    print(
        f"{'both':<6}{'':>12}{total['old']:>13.2f}{'':>13}{total['new']:>13.2f}"
        f"{total['new'] / total['old']:>8.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
