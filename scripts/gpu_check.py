#!/usr/bin/env python
"""The GPU check: full-size data, training, prediction and the embedding stage on CUDA.

    bash scripts/gpu_check.sh                   # on the GPU machine (the way to run it)
    GPU_CHECK_CPU=1 bash scripts/gpu_check.sh   # the same stages with tiny sizes on a CPU
    PYTHONPATH=src python scripts/gpu_check.py --dry-run

Made for one H200 with 16 CPU cores and no network, to finish in under 8 minutes. Stages,
each with a time budget (seconds; the slack of a stage carries to the next ones; the budgets
count from the shell script's start and shrink in proportion to end 30 s before its time
limit, GPU_CHECK_LIMIT_S, default 480; a SIGTERM from that limit saves what the running stage
had measured):

1. data (45): the ``full`` preset of the demo generator without images (3.6M / 10K / 379K
   rows, 91,718 items) into <out-dir>/full/ (kept between runs on the same machine);
2. load (25): read time and peak RSS of the reader in a subprocess, the loader-only rate;
3. train (335): the MMCTR seed and rank-1 experiments (config/MMCTR), each in fp32 and in
   bf16: timed optimizer steps (median of 3 after warm-up) give samples/s and the epoch
   time EXTRAPOLATED from them; a profile of 5 seed bf16 steps (device-busy share, kernel
   launches, top kernels); the seed bf16 step with the old step's two host waits, side by
   side; one real seed bf16 epoch through ``train(cfg)`` with the default step. Only then
   the CUDA-graph step (``cuda_graphs``), so that a failed recording cannot cost those
   figures: seed bf16 side by side with its default, the graphed step against the eager
   one (demo architecture, fp32, no dropout, same batches: largest parameter difference),
   one real seed bf16 epoch with ``cuda_graphs=true``, and rank-1 bf16 side by side with
   its default. Then the other
   combinations' real epochs, cheapest first, while the budget allows (overrides
   ``epochs=1 bf16=... [cuda_graphs=true]``; each also reports valid/test AUC). Every
   figure says whether it was measured over a whole epoch or extrapolated;
4. predict (20): ``predict_submission`` for a trained seed run (the test split, file order,
   CSV + zip), and ``predict_probs`` over the whole test split;
5. embed (55): ~20,000 item images written by the demo generator's image writer, a
   ViT-B/32 CLIP with random weights, and ``generate_embeddings`` on every visible GPU;
   then the decode-only rate of the workers on 4,000 of the images, uint8 pixels (the
   pipeline's path) against the whole processor (float32 pixels), side by side.

Prints every figure and writes them to $OUT/gpu_check.json when $OUT is set (after every
stage, so a run cut short still leaves what it measured), else to <out-dir>/gpu_check.json.
``--dry-run`` (or GPU_CHECK_CPU=1): the tiny preset, config/demo's architecture, 256 images
of a tiny CLIP, on the CPU; it exercises every code path in about two minutes.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

# scripts/ is on sys.path when this file is run (python scripts/gpu_check.py)
import bench
import bench_data as bd
import bench_harness as harness

GPU_BUDGETS = {"data": 45, "load": 25, "train": 335, "predict": 20, "embed": 55}
CPU_BUDGETS = {"data": 30, "load": 20, "train": 90, "predict": 20, "embed": 60}
COMBOS = [("seed", True), ("seed", False), ("rank1", True), ("rank1", False)]
log = harness.log


class Budget:
    """Stage deadlines: stage k must end by start + the sum of the budgets up to k.

    ``started_at`` (time.time() when gpu_check.sh started, $GPU_CHECK_START) puts the clock
    where the shell's ``timeout`` starts its own, so the interpreter's start-up counts; with
    ``limit`` ($GPU_CHECK_LIMIT_S, that timeout) the budgets shrink in proportion to end
    ``margin`` seconds before it, which leaves time to save the report.
    """

    def __init__(
        self,
        budgets: dict[str, float],
        limit: float | None = None,
        started_at: float | None = None,
        margin: float = 30.0,
    ) -> None:
        self.start = time.perf_counter() - (time.time() - started_at if started_at else 0.0)
        total = sum(budgets.values())
        scale = min(1.0, max(limit - margin, 0.0) / total) if limit else 1.0
        self.budgets = {name: round(sec * scale, 1) for name, sec in budgets.items()}
        self.ends: dict[str, float] = {}
        end = 0.0
        for name, sec in self.budgets.items():
            end += sec
            self.ends[name] = end

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, stage: str) -> float:
        return self.ends[stage] - self.elapsed()


class Report:
    """The result dict, printed as it grows and saved after every stage."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        harness.write_json(self.path, self.data)


class CutShort(BaseException):
    """SIGTERM from gpu_check.sh's ``timeout``: save what was measured, then stop."""


def _cut_short(signum, frame) -> None:
    raise CutShort


def stage(report: Report, budget: Budget, name: str):
    """Decorator-free stage runner: times ``fn``, stores its result or its error. With
    ``partial=True`` ``fn`` gets the stage's result dict as ``out=`` and fills it as it goes,
    so a run cut short by the time limit still saves what the stage had measured."""

    def run(fn, *args, partial: bool = False, **kwargs):
        t = time.perf_counter()
        log(f"\n=== {name} (budget {budget.budgets[name]} s, {budget.left(name):.0f} s left) ===")
        so_far: dict[str, Any] = {}
        report.data.setdefault("stages", {})[name] = so_far
        try:
            out = fn(*args, out=so_far, **kwargs) if partial else fn(*args, **kwargs)
            status = "ok"
        except CutShort:
            so_far.update(
                status="cut short by the time limit",
                seconds=round(time.perf_counter() - t, 2),
            )
            report.data["elapsed_seconds"] = round(budget.elapsed(), 1)
            report.save()
            log(f"--- {name}: cut short by the time limit; saved what it measured")
            raise
        except Exception as exc:  # keep going: the later stages still tell us something
            traceback.print_exc()
            out, status = {**so_far, "error": f"{type(exc).__name__}: {exc}"}, "failed"
        out = dict(out or {})
        out.update(status=status, seconds=round(time.perf_counter() - t, 2))
        out["budget_seconds"] = budget.budgets[name]
        report.data.setdefault("stages", {})[name] = out
        report.data["elapsed_seconds"] = round(budget.elapsed(), 1)
        report.save()
        log(f"--- {name}: {status} in {out['seconds']:.1f} s (total {budget.elapsed():.0f} s)")
        return out

    return run


# ---------------------------------------------------------------------------- stages


def stage_data(preset: str, out_dir: Path) -> dict[str, Any]:
    data_dir = harness.ensure_data(preset, out_dir)
    return {"data_dir": str(data_dir), "preset": preset}


def stage_load(data_dir: Path, ctx: dict[str, Any], dry: bool) -> dict[str, Any]:
    load = bd.measure_load(data_dir)
    log(
        f"load (subprocess): {load['load_seconds']:.1f} s, peak RSS {load['peak_rss_gb']:.2f} GB, "
        f"rows {load['rows']}"
    )
    cfg = harness.bench_config(bd.LOADER_EXPID, data_dir)
    t = time.perf_counter()
    items, splits, _ = harness.load_data(cfg)
    in_process = time.perf_counter() - t
    kw = dict(repeats=1, warmup=1, min_seq_len=int(cfg.model.first_k_cols))
    rate = bd.loader_rate(splits["train"], 4096, **kw)
    rate1 = bd.loader_rate(splits["train"], 4096, threads=1, **kw)
    log(
        f"loader-only batch 4096: {rate['samples_per_s']:,.0f} samples/s with "
        f"{rate['torch_threads']} threads, {rate1['samples_per_s']:,.0f} with 1"
    )
    ctx.update(items=items, splits=splits, load_seconds=in_process)
    return {
        "load_seconds": load["load_seconds"],
        "peak_rss_gb": load["peak_rss_gb"],
        "rows": load["rows"],
        "in_process_load_seconds": in_process,
        "loader_samples_per_s": rate["samples_per_s"],
        "loader_samples_per_s_one_thread": rate1["samples_per_s"],
        "torch_threads": rate["torch_threads"],
    }


# seed bf16 step variants measured side by side with the default: name -> (kwargs, what)
# (length chunking forced on under bf16 was measured on 2026-11-30: the default 1.27x faster)
# key -> (experiment, measure_train kwargs, what); each against that experiment's bf16 default
SIDE_BY_SIDE = {
    "seed_bf16_host_syncs": (
        "seed",
        {"host_syncs": True},
        "two host waits per step (the step before the on-device NaN guard)",
    ),
    "seed_bf16_cuda_graphs": (
        "seed",
        {"cuda_graphs": True},
        "one CUDA graph per step (cuda_graphs: true)",
    ),
    "rank1_bf16_cuda_graphs": (
        "rank1",
        {"cuda_graphs": True},
        "one CUDA graph per step (cuda_graphs: true)",
    ),
}


def profile_steps(runner, steps: int) -> dict[str, Any]:
    """torch.profiler over ``steps`` training steps: wall and device-busy time per step,
    kernel launches per step, and the kernels/ops that take the most device (else CPU) time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_gpu = runner.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    runner.sync()
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        runner.run_steps(steps)
        wall = time.perf_counter() - t
    events = prof.key_averages()

    def dev(e) -> float:  # microseconds; the attribute was renamed in torch 2.4
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)))

    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # device-side rows
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    busy = sum(dev(e) for e in kernels) / 1e6
    key = dev if on_gpu else (lambda e: float(e.self_cpu_time_total))
    top = sorted(kernels if on_gpu else events, key=key, reverse=True)[:15]
    return {
        "steps": steps,
        "wall_ms_per_step": wall / steps * 1e3,
        "device_busy_ms_per_step": busy / steps * 1e3 if on_gpu else None,
        "device_busy_fraction": busy / wall if on_gpu else None,
        "kernel_launches_per_step": launches / steps,
        "top": [
            {
                "name": e.key[:80],
                "calls_per_step": e.count / steps,
                "ms_per_step": key(e) / steps / 1e3,
            }
            for e in top
        ],
        "note": "profiler overhead inflates wall time; the device-busy share is the figure to read",
        "torch": torch.__version__,
    }


def describe_profile(p: dict[str, Any]) -> str:
    lines = [f"profile ({p['steps']} steps): {p['wall_ms_per_step']:.1f} ms/step wall"]
    if p["device_busy_ms_per_step"] is not None:
        lines[0] += (
            f", device busy {p['device_busy_ms_per_step']:.1f} ms/step "
            f"({p['device_busy_fraction']:.0%}), {p['kernel_launches_per_step']:.0f} launches/step"
        )
    for row in p["top"][:10]:
        lines.append(
            f"    {row['ms_per_step']:8.2f} ms  x{row['calls_per_step']:<6.1f} {row['name']}"
        )
    return "\n".join(lines)


def _overrides(root: Path, name: str, bf16: bool, arch: list[str]) -> list[str]:
    """One epoch, the precision, and a run folder of its own for each combination."""
    ckpt = root / "checkpoints" / f"{name}_{'bf16' if bf16 else 'fp32'}"
    return [*arch, "epochs=1", f"bf16={str(bf16).lower()}", f"model_root={ckpt}"]


def stage_train(
    data_dir: Path,
    root: Path,
    ctx: dict[str, Any],
    budget: Budget,
    device,
    dry: bool,
    out: dict[str, Any],
) -> dict[str, Any]:
    import torch

    from mmctr.training.trainer import train

    arch = harness.demo_architecture_overrides() if dry else []
    items, split = ctx["items"], ctx["splits"]["train"]
    n_train = split.n_rows
    on_gpu = device.type == "cuda"
    steps = {"seed": 20, "rank1": 50} if on_gpu else {"seed": 1, "rank1": 2}
    warmup = 5 if on_gpu else 1
    out.update({"device": str(device), "n_train": n_train, "runs": {}})

    def timed(name: str, bf16: bool, config_bf16: bool | None = None, **kwargs) -> dict[str, Any]:
        """measure_train of experiment ``name`` at this stage's sizes, ``bf16`` or not; the
        config (its run folder) is that of ``config_bf16`` (default: ``bf16``)."""
        ov = _overrides(root, name, bf16 if config_bf16 is None else config_bf16, arch)
        cfg = harness.bench_config(bench.EXPERIMENTS[name], data_dir, ov)
        return bench.measure_train(
            cfg,
            items,
            split,
            device,
            bf16=bf16,
            steps=steps[name],
            repeats=3 if on_gpu else 1,
            warmup_steps=warmup,
            **kwargs,
        )

    if arch:
        out["overrides"] = arch
    # 1) timed steps for every combination
    for name, bf16 in COMBOS:
        key = f"{name}_{'bf16' if bf16 else 'fp32'}"
        if budget.left("train") < 10:
            out["runs"][key] = {"status": "skipped: train budget spent"}
            continue
        keep = name == "seed" and (bf16 or not on_gpu)
        try:
            r = timed(name, bf16, keep_model=keep)
        except Exception as exc:  # one combination failing (OOM, ...) must not lose the rest
            traceback.print_exc()
            out["runs"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
            continue
        if "_runner" in r:
            ctx["predict_runner"] = r.pop("_runner")
        r["epoch_seconds_extrapolated"] = n_train / r["samples_per_s"]
        r["epoch"] = (
            f"extrapolated from {r['steps_per_repeat']} timed steps (median of {r['repeats']})"
        )
        out["runs"][key] = r
        log(
            f"{key:11s} batch {r['batch_size']:5d}: {r['samples_per_s']:>10,.0f} samples/s, "
            f"{r['step_seconds'] * 1e3:8.1f} ms/step -> epoch ~{r['epoch_seconds_extrapolated']:,.0f} s "
            f"(extrapolated)"
        )
        log(bench._describe_breakdown(key, r))
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
    # 1b) where the seed bf16 step's wall time goes: device busy time against host time
    runner = ctx.get("predict_runner")
    if runner is not None and budget.left("train") > 60:
        key = "seed_bf16_profile" if on_gpu else "seed_profile"
        try:
            out[key] = profile_steps(runner, 5 if on_gpu else 1)
            log(describe_profile(out[key]))
        except Exception as exc:  # a diagnostic failing must not lose the stage's figures
            traceback.print_exc()
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}

    def side_by_side(variant: str) -> None:
        """SIDE_BY_SIDE[variant] against its experiment's bf16 default (same batches)."""
        name, kwargs, what = SIDE_BY_SIDE[variant]
        if budget.left("train") < 60 or (not on_gpu and "cuda_graphs" in kwargs):
            return
        try:
            # the CPU dry run: fp32 (bf16 is emulated on most CPUs)
            r = timed(name, on_gpu, config_bf16=True, breakdown=False, **kwargs)
        except Exception as exc:  # a variant failing must not lose the stage's figures
            traceback.print_exc()
            out[variant] = {"what": what, "error": f"{type(exc).__name__}: {exc}"}
            return
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        # (the CPU dry run's variants are fp32 against a bf16 default: no ratio)
        base = out["runs"].get(f"{name}_bf16", {}).get("samples_per_s") if on_gpu else None
        ratio = base / r["samples_per_s"] if base else None
        out[variant] = {
            "what": what,
            "samples_per_s": r["samples_per_s"],
            "step_seconds": r["step_seconds"],
            "epoch_seconds_extrapolated": n_train / r["samples_per_s"],
            "host_waits_per_step": r["host_waits_per_step"],
            "default_over_variant": ratio,
            "cuda_graphs": r.get("cuda_graphs"),
        }
        log(
            f"{name}_bf16 with {what}: {r['samples_per_s']:,.0f} samples/s, "
            f"{r['host_waits_per_step']} host waits/step"
            + (f" (the default is {ratio:.2f}x that)" if ratio else "")
        )

    load_s = ctx.get("load_seconds", 10.0)

    def real_epoch(key: str, name: str, prec: str, extra: list[str], r: dict[str, Any]) -> None:
        """One real epoch through train(cfg), if the budget allows; the result goes into r."""
        # reading the data again, evaluation, checkpoints: 2 loads + 25% of the epoch + 20 s
        need = 1.25 * r["epoch_seconds_extrapolated"] + 2 * load_s + 20
        left = budget.left("train")
        if need > left:
            r["real_epoch"] = f"not run: needs ~{need:.0f} s, {left:.0f} s left in the budget"
            log(
                f"{key}: one real epoch needs ~{need:.0f} s, {left:.0f} s left -> extrapolated only"
            )
            return
        folder = f"{name}_graphs" if extra else name
        overrides = [*_overrides(root, folder, prec == "bf16", arch), *extra]
        cfg = harness.bench_config(bench.EXPERIMENTS[name], data_dir, overrides)
        log(f"{key}: one real epoch through train(cfg) (~{need:.0f} s of {left:.0f} s left)")
        t = time.perf_counter()
        try:
            res = train(cfg, gpu=(device.index or 0) if on_gpu else -1, progress=False)
        except Exception as exc:
            traceback.print_exc()
            r["real_epoch"] = {"error": f"{type(exc).__name__}: {exc}"}
            return
        finally:
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        wall = time.perf_counter() - t
        ep = res["epoch_seconds"][0]
        r["real_epoch"] = {
            "epoch_seconds": ep["seconds"],
            "loop_seconds": ep["loop_seconds"],
            "train_call_seconds": res.get("train_seconds"),
            "wall_seconds": wall,
            "samples_per_s": n_train / ep["loop_seconds"],
            "valid_AUC": res["valid"].get("AUC"),
            "valid_logloss": res["valid"].get("logloss"),
            "test_AUC": res.get("test", {}).get("AUC"),
            "run_dir": res["run_dir"],
            "note": "measured: epoch_seconds = the epoch's training batches (loop_seconds, "
            "which samples_per_s divides) + its valid evaluation and best checkpoint; "
            "train_call_seconds adds the final valid/test scoring with the best weights; "
            "wall_seconds adds reading the data and building the model",
        }
        r["epoch"] = "measured (one real epoch) and extrapolated"
        if name == "seed" and not extra:
            ctx.setdefault("trained_seed", {"expid": cfg.expid, "prec": prec, "ov": overrides})
        log(
            f"{key}: epoch {ep['seconds']:.1f} s (training batches {ep['loop_seconds']:.1f} s, "
            f"then the valid evaluation and checkpoint; train() {res['train_seconds']:.1f} s, "
            f"wall {wall:.1f} s), valid AUC {res['valid'].get('AUC', float('nan')):.4f}"
        )

    # 1c) the eager variants; 2a) the real seed epoch with the default step. Both come before
    #     anything CUDA-graph related, so that a failed recording cannot cost these figures.
    side_by_side("seed_bf16_host_syncs")
    runs = out["runs"]
    first = "seed_bf16" if on_gpu else "seed_fp32"
    if "epoch_seconds_extrapolated" in runs.get(first, {}):
        real_epoch(first, "seed", first.split("_")[1], [], runs[first])
    # 1d) the CUDA-graph step: side by side, against eager (no dropout, fp32), one real epoch
    side_by_side("seed_bf16_cuda_graphs")
    if on_gpu and budget.left("train") > 60:
        try:
            out["cuda_graphs_match_eager"] = graphs_match_eager(data_dir, items, split, device)
            log(f"cuda_graphs against eager: {out['cuda_graphs_match_eager']}")
        except Exception as exc:
            traceback.print_exc()
            out["cuda_graphs_match_eager"] = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
        torch.cuda.empty_cache()
    graphs_run = out.get("seed_bf16_cuda_graphs", {})
    if "epoch_seconds_extrapolated" in graphs_run:
        real_epoch("seed_bf16_cuda_graphs", "seed", "bf16", ["cuda_graphs=true"], graphs_run)
    side_by_side("rank1_bf16_cuda_graphs")  # batch 128: the most launch-bound step
    # 2b) the other combinations' real epochs, cheapest first, while the budget allows
    rest = [(k, v) for k, v in runs.items() if k != first and "epoch_seconds_extrapolated" in v]
    for key, r in sorted(rest, key=lambda kv: kv[1]["epoch_seconds_extrapolated"]):
        name, prec = key.split("_")
        real_epoch(key, name, prec, [], r)
    return out


def graphs_match_eager(data_dir: Path, items, split, device, steps: int = 8) -> dict[str, Any]:
    """The demo architecture without dropout, fp32, ``steps`` steps on the same batches,
    eager against CUDA graphs (3 eager warm-up steps, then the recording and replays): the
    largest parameter difference and both summed losses."""
    import torch

    over = [*harness.demo_architecture_overrides(), "transformer_dropout=0", "net_dropout=0"]
    cfg = harness.bench_config(bench.EXPERIMENTS["seed"], data_dir, [*over, "bf16=false"])
    eager = bench.StepRunner(cfg, items, split, device, False, sequence_chunks=False)
    eager.loader.trim_padding = False  # the full-width batches the graphed runner gets
    graphed = bench.StepRunner(cfg, items, split, device, False, cuda_graphs=True)
    for runner in (eager, graphed):
        runner.run_steps(steps)
    diff = max(
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(eager.model.parameters(), graphed.model.parameters())
    )
    losses = [r.guard.read()[0] for r in (eager, graphed)]
    return {
        "steps": steps,
        "max_abs_param_diff": diff,
        "loss_sum_eager": losses[0],
        "loss_sum_graphs": losses[1],
        "graphs": graphed.graphed.summary(),
        "match": diff < 1e-4 and abs(losses[0] - losses[1]) <= 1e-4 * abs(losses[0]),
        "torch": torch.__version__,
    }


def stage_predict(data_dir: Path, root: Path, ctx: dict[str, Any], device) -> dict[str, Any]:
    from mmctr.prediction.submission import predict_submission

    out: dict[str, Any] = {}
    test = ctx["splits"]["test"]
    runner = ctx.get("predict_runner")
    if runner is not None:
        p = bench.measure_predict(runner, test, test.n_rows, repeats=1)
        out["predict_probs"] = p
        log(
            f"predict_probs over the test split ({p['rows']:,} rows, bf16 {p['bf16']}): "
            f"{p['samples_per_s']:,.0f} samples/s"
        )
    trained = ctx.get("trained_seed")
    if trained is None:
        out["submission"] = "not run: no real seed epoch was trained within the budget"
        return out
    expid, prec = trained["expid"], trained["prec"]
    on_gpu = device.type == "cuda"
    s = predict_submission(
        harness.MMCTR_CONFIG,
        expid,
        gpu=(device.index or 0) if on_gpu else -1,
        out_dir=root / "submission",
        overrides=[*harness.data_overrides(data_dir), *trained["ov"]],
        progress=False,
    )
    s["samples_per_s"] = s["rows"] / s["seconds"]
    s["precision"] = prec
    out["submission"] = s
    log(
        f"predict_submission ({expid}, {prec}): {s['rows']:,} rows in {s['seconds']:.1f} s "
        f"(reading included), test AUC {s.get('test_AUC', float('nan')):.4f}"
    )
    return out


def write_item_images(out_dir: Path, n_items: int, seed: int = 2025) -> dict[str, Any]:
    """``n_items - 1`` item images by the demo generator's image writer (with its share of
    missing and corrupt files) and an item_info.parquet of item ids 0..n_items-1."""
    import numpy as np
    import pyarrow as pa

    from mmctr.atomic import atomic_write_parquet
    from mmctr.data import demo

    preset = demo.Preset(f"images{n_items}", 0, 0, 0, n_items, 1000, 32, 2000)
    world = demo._build_world(preset, seed)
    counts = demo.write_images(world, out_dir, seed)
    info = out_dir / "item_info.parquet"
    atomic_write_parquet(pa.table({"item_id": pa.array(np.arange(n_items, dtype=np.int64))}), info)
    return {"item_info": str(info), **counts}


def stage_embed(root: Path, device, dry: bool, budget: Budget) -> dict[str, Any]:
    import torch

    from mmctr.embedding import build_random_clip, generate_embeddings

    left = budget.left("embed")
    n_images = 256 if dry else (20_000 if left > 45 else 5_000)
    arch = "tiny" if dry else "vit-b32"
    img_root = root / f"images_{n_images}"
    t = time.perf_counter()
    if not (img_root / "item_info.parquet").is_file():
        images = write_item_images(img_root, n_images + 1)
    else:
        images = {"item_info": str(img_root / "item_info.parquet"), "reused": True}
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    model_dir = build_random_clip(root / f"clip_{arch}", arch=arch, seed=0)
    build_s = time.perf_counter() - t
    on_gpu = device.type == "cuda"
    gpus = list(range(torch.cuda.device_count())) if on_gpu else -1
    workers = min(16, os.cpu_count() or 1)
    s = generate_embeddings(
        images["item_info"],
        img_root / "item_images",
        model=str(model_dir),
        out=root / "embed_out" / "item_info.parquet",
        dim=128,
        batch_size=1024 if on_gpu else 64,
        num_workers=workers,
        gpu=gpus,
        cache_dir=root / "embed_out" / "cache",
        force=True,
        progress=False,
    )
    out = {
        "arch": arch,
        "weights": "random",
        "images": n_images,
        "image_write_seconds": write_s,
        "model_build_seconds": build_s,
        "devices": s["devices"],
        "amp": s["amp"],
        "num_workers": workers,
        "images_encoded": s["images_encoded"],
        "encode_seconds": s["encode_seconds"],
        "images_per_s": s["images_per_s"],
        "counts": s["counts"],
        "explained_variance": s["explained_variance"],
    }
    # decode only, side by side: uint8 pixels (the pipeline's path) vs the whole processor
    from bench_embed import bench_decode

    from mmctr.embedding.encoder import describe_model
    from mmctr.embedding.images import split_processor

    processor = describe_model(str(model_dir)).processor
    out["preprocessing"] = split_processor(processor)[1]
    k = min(n_images, 4000)
    paths = [str(p) for p in sorted((img_root / "item_images").glob("*.jpg"))][:k]
    if budget.left("embed") > 15:
        u8, _ = bench_decode(processor, paths, 256, workers, 1, 0, uint8=True)
        f32, _ = bench_decode(processor, paths, 256, workers, 1, 0)
        out["decode_only"] = {
            "images": len(paths),
            "uint8_images_per_s": u8,
            "whole_processor_images_per_s": f32,
            "ratio": u8 / f32,
        }
        log(
            f"decode only ({len(paths)} images, {workers} workers): uint8 {u8:,.0f}/s, "
            f"whole processor {f32:,.0f}/s ({u8 / f32:.2f}x)"
        )
    log(
        f"generate_embeddings ({arch}, {len(s['devices'])} device(s), amp {s['amp']}, "
        f"{workers} workers): {s['images_encoded']:,} images in {s['encode_seconds']:.1f} s "
        f"= {s['images_per_s']:,.0f} images/s; statuses {s['counts']}"
    )
    return out


# ------------------------------------------------------------------------------ main


def run_stages(report: Report, budget: Budget, root: Path, device, dry: bool) -> int:
    """The five stages in order; non-zero when data or load fail (nothing else can run)."""
    import torch

    ctx: dict[str, Any] = {}
    data = stage(report, budget, "data")(stage_data, "tiny" if dry else "full", root)
    if data["status"] != "ok":
        return 1
    data_dir = Path(data["data_dir"])
    load = stage(report, budget, "load")(stage_load, data_dir, ctx, dry)
    if load["status"] != "ok":
        return 1
    stage(report, budget, "train")(
        stage_train, data_dir, root, ctx, budget, device, dry, partial=True
    )
    stage(report, budget, "predict")(stage_predict, data_dir, root, ctx, device)
    ctx.pop("predict_runner", None)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    stage(report, budget, "embed")(stage_embed, root, device, dry, budget)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--out-dir", default="/tmp/mmctr_gpu_check", help="work folder")
    p.add_argument("--json", help="result file (default $OUT/gpu_check.json)")
    args = p.parse_args(argv)
    from mmctr.runtime import flush_denormals

    flush_denormals()  # before any torch op starts the thread pool, as train() does
    dry = args.dry_run or os.environ.get("GPU_CHECK_CPU", "") not in ("", "0")

    import torch

    root = Path(args.out_dir) / ("dry_run" if dry else "gpu")
    root.mkdir(parents=True, exist_ok=True)
    json_path = Path(
        args.json
        or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None)
        or root / "gpu_check.json"
    )
    if not dry and not torch.cuda.is_available():
        log("no CUDA device: run with --dry-run (or GPU_CHECK_CPU=1) on a CPU machine")
        return 2
    device = torch.device("cpu") if dry else torch.device("cuda:0")
    started = os.environ.get("GPU_CHECK_START")
    limit = os.environ.get("GPU_CHECK_LIMIT_S")
    budget = Budget(
        CPU_BUDGETS if dry else GPU_BUDGETS,
        limit=float(limit) if limit else None,
        started_at=float(started) if started else None,
    )
    signal.signal(signal.SIGTERM, _cut_short)
    report = Report(json_path)
    report.data.update(
        date=harness.now_iso(),
        mode="dry-run (CPU, tiny sizes)" if dry else "gpu",
        device=str(device),
        machine=harness.machine_info(),
        versions=harness.versions(),
        budgets_seconds=budget.budgets,
        timing="median of repeats after warm-up steps; epoch times say 'extrapolated' or 'measured'",
    )
    if torch.cuda.is_available():
        report.data["cuda"] = {
            "version": torch.version.cuda,
            "bf16_supported": bool(torch.cuda.is_bf16_supported()),
            "tf32_matmul": getattr(torch.backends.cuda.matmul, "allow_tf32", None),
        }
    report.save()
    m = report.data["machine"]
    log(
        f"{report.data['mode']}: {m['cpu_model']} x{m['cpu_cores']}, GPUs: "
        f"{', '.join(g['name'] for g in m['gpus']) or 'none'}; torch "
        f"{report.data['versions']['torch']}; results -> {json_path}"
    )

    try:
        code = run_stages(report, budget, root, device, dry)
    except CutShort:
        return 124
    if code:
        return code

    report.data["elapsed_seconds"] = round(budget.elapsed(), 1)
    failed = [k for k, v in report.data["stages"].items() if v["status"] != "ok"]
    report.data["failed_stages"] = failed
    report.save()
    log(f"\ntotal {budget.elapsed():.0f} s; failed stages: {failed or 'none'}; json: {json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
