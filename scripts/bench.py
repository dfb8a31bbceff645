#!/usr/bin/env python
"""The benchmark suite: one command, one benchmark per name, one shared harness
(``scripts/bench_harness.py``: timing, machine and versions, JSON, the generated data).

    python scripts/bench.py [suite] [options]     # the whole toolkit (the default; make bench)
    python scripts/bench.py data [options]        # loader: load time, peak RSS, vs FuxiCTR's
    python scripts/bench.py embed [options]       # stage 1: decode, CLIP forward, end to end
    python scripts/bench.py ddp [options]         # torchrun on 1 vs 2 processes
    python scripts/bench.py threads [options]     # two runs side by side: thread choice
    python scripts/bench.py NAME --help           # each benchmark's options

docs/benchmarks.md holds the current figures with the command behind each. The rest of this
docstring is ``suite``:

Throughput of the whole toolkit on generated data: loader, training, prediction, embedding.

    python scripts/bench.py                       # demo preset (cached in data/bench_demo/)
    python scripts/bench.py --full                # the 3.6M-row preset (data/bench_full/)
    python scripts/bench.py --quick --json b.json # tiny preset, small model, < 1 minute (CI)
    python scripts/bench.py --gpu 0               # train/predict on a GPU instead of the CPU

Prints a table and (``--json``) writes every figure with the machine, library versions and
date. Every rate is the MEDIAN of ``--repeats`` timed runs after warm-up runs.

- loader: ``read_item_table`` + ``read_split`` of train/valid/test in a subprocess (time and
  peak RSS of the reader alone), and loader-only samples/s of a shuffled ``BatchLoader``
  epoch at batch 4096 (scripts/bench_data.py does both; FuxiCTR's parquet loader runs side
  by side when ``requirements-bench.txt`` is installed);
- train: optimizer steps (batch, forward, BCE on logits, backward, gradient clipping, Adam)
  with the MMCTR seed and rank-1 hyper-parameters of config/MMCTR, exactly as the trainer
  runs them (``use_bf16``/``autocast_ctx``, ``make_optimizer``, the config's
  ``max_gradient_norm``); then fp32 against bf16 autocast on the same step;
- where the time goes: the loader's share of a step, and the step split between the sequence
  encoder (``model.sequence``), the cross network (``model.cross``), the optimizer and the
  rest, timed with forward and backward hooks on those sub-modules;
- predict: ``predict_probs`` over the head of the valid split at the trainer's eval batch;
- embed: JPEG decode + CLIP image processing in DataLoader workers, and the ViT-B/32
  architecture (random weights) on ready pixels (scripts/bench_embed.py's functions).

On a shared CPU whose cores are busy with other work, OpenMP threads that spin-wait stall
every parallel region (the loader line shows 1 thread side by side); ``OMP_WAIT_POLICY=PASSIVE
python scripts/bench.py`` gives steadier figures there. The JSON records both variables.

``--quick`` uses the tiny preset and the demo architecture (config/demo's model keys
applied to the MMCTR experiments, whose trainer keys stay): a smoke run whose training
figures are not comparable with the real ones. CPUs without AMX/AVX512-BF16 emulate bf16
matrix products (very slowly); there the fp32/bf16 pair uses the demo architecture too.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# scripts/ is on sys.path when this file is run (python scripts/bench.py)
import bench_data as bd
import bench_harness as harness

EXPERIMENTS = {"seed": "Transformer_DCN_seed", "rank1": "Transformer_DCN_rank1"}
PROFILED = ("sequence", "cross")  # named sub-modules of TransformerDCN
TARGETS = {  # issue #10; peers: 137 and 24 samples/s on a 2-core AMX CPU in fp32
    "loader.samples_per_s": (">=", 1_000_000),
    "loader.load_seconds (full preset)": ("<=", 30),
    "loader.peak_rss_gb (full preset)": ("<=", 2),
    "train.seed.samples_per_s": (">=", 1_100),
    "train.rank1.samples_per_s": (">=", 190),
}
log = harness.log


# ------------------------------------------------------------------------ train steps


class ModuleTimer:
    """Wall time spent inside named sub-modules, forward and backward, through hooks.

    Forward: pre-hook to hook. Backward: the full backward pre-hook (gradients of the
    outputs ready) to the full backward hook (gradients of the inputs computed). The
    autograd engine runs a module's nodes together (they are contiguous in creation order),
    so on the CPU this is the module's own backward; on CUDA every hook synchronises.

    The hooks exist only while ``enabled`` is True: full backward hooks wrap the modules'
    inputs and outputs in extra autograd nodes, which cost the CPU seed step ~25% (116.7
    against ~150 samples/s hook-free, 12-01), so the timed rates run without them and only
    the steps run for the breakdown carry them.
    """

    def __init__(self, model, names, sync) -> None:
        self.sync = sync
        self.model, self.names = model, list(names)
        self.totals = {n: 0.0 for n in names}
        self._start: dict[tuple[str, str], float] = {}
        self.handles: list = []

    @property
    def enabled(self) -> bool:
        return bool(self.handles)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        if on and not self.handles:
            for name in self.names:
                module = self.model.get_submodule(name)
                self.handles += [
                    module.register_forward_pre_hook(self._begin(name, "fwd")),
                    module.register_forward_hook(self._end(name, "fwd")),
                    module.register_full_backward_pre_hook(self._begin(name, "bwd")),
                    module.register_full_backward_hook(self._end(name, "bwd")),
                ]
        elif not on:
            self.remove()

    def _begin(self, name: str, phase: str):
        def hook(*_):
            if self.enabled:
                self.sync()
                self._start[(name, phase)] = time.perf_counter()

        return hook

    def _end(self, name: str, phase: str):
        def hook(*_):
            if self.enabled and (name, phase) in self._start:
                self.sync()
                self.totals[name] += time.perf_counter() - self._start.pop((name, phase))

        return hook

    def take(self) -> dict[str, float]:
        out, self.totals = self.totals, dict.fromkeys(self.totals, 0.0)
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self._start.clear()


def _sync_fn(device):
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _cycle(loader) -> Iterator[dict]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class StepRunner:
    """The trainer's optimizer step on ``cfg``'s model, batch by batch, with timings.

    One step: take the next shuffled batch, then the trainer's own step
    (:class:`mmctr.training.step.TrainStep`, accumulation_steps 1): forward under bf16
    autocast or not, BCE, backward, regularisers, clipping, the optimizer through the on-device
    NaN guard. The host reads the guard once per ``run_steps``.
    """

    def __init__(
        self,
        cfg,
        items,
        split,
        device,
        bf16: bool,
        sequence_chunks: bool | None = None,
        untrimmed: bool = False,
        host_syncs: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        import torch

        from mmctr.data.batching import BatchLoader
        from mmctr.models import build_model
        from mmctr.training.graphs import GraphedStep, configure_for_graphs
        from mmctr.training.guard import DivergenceGuard
        from mmctr.training.step import TrainStep
        from mmctr.training.trainer import make_optimizer

        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, not {device}")
        from mmctr.runtime import keep_freed_memory

        keep_freed_memory()  # as train() does (MMCTR_MALLOC=default measures without it)
        t = cfg.trainer
        self.cfg, self.device, self.bf16 = cfg, device, bf16
        self.batch_size = t.batch_size
        self.min_seq_len = int(getattr(cfg.model, "first_k_cols", 1) or 1)
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model, cfg.dataset, items).to(device)
        if sequence_chunks is not None and hasattr(self.model, "sequence"):
            self.model.sequence.length_chunks = sequence_chunks  # default: by device
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.optimizer = make_optimizer(
            t.optimizer, self.model.parameters(), t.learning_rate, t.weight_decay
        )
        self.loader = BatchLoader(
            split,
            t.batch_size,
            shuffle=True,
            seed=t.seed,
            device=device,
            min_seq_len=self.min_seq_len,
            trim_padding=t.trim_padding and not cuda_graphs,
            bucket_by_length=t.bucket_by_length,
            on_device=t.data_on_device,
            pin_memory=t.pin_memory,
        )
        self.batches = _cycle(self.loader)
        seq, cross = getattr(self.model, "sequence", None), getattr(self.model, "cross", None)
        self._ours = (
            self.model.min_seq_len,
            seq.length_chunks if seq is not None else None,
            cross.skip_zeros if cross is not None else None,
            self.loader.trim_padding,
        )
        self.set_untrimmed(untrimmed)
        # host_syncs: the step as it was before the guard, with two host waits per step (the
        # model reading the longest history, the trainer reading the loss): side by side.
        self.host_syncs = host_syncs
        self.guard = DivergenceGuard(self.optimizer, device, sync_every_step=host_syncs)
        self.sync = _sync_fn(device)
        names = [n for n in PROFILED if hasattr(self.model, n)]
        self.timer = ModuleTimer(self.model, names, self.sync)
        self.train_step = TrainStep(  # the trainer's step, shared
            self.model,
            self.optimizer,
            self.guard,
            device,
            bf16=bf16,
            max_gradient_norm=t.max_gradient_norm,
            embedding_regularizer=t.embedding_regularizer,
            net_regularizer=t.net_regularizer,
            autocast_cache=not cuda_graphs,
        )
        self.graphed = None
        if cuda_graphs:  # the trainer's CUDA-graph step (training/graphs.py)
            configure_for_graphs(self.model, self.optimizer, True)
            self.graphed = GraphedStep(
                self.train_step.whole, self.optimizer, device, full_rows=t.batch_size
            )
        self.model.train()

    def set_untrimmed(self, on: bool) -> None:
        """Switch this runner (same weights, optimizer and batch stream) between our step and
        the peers' compute pattern: every history column through the Transformer (no
        trimming, no length chunks) and the dense cross network."""
        seq, cross = getattr(self.model, "sequence", None), getattr(self.model, "cross", None)
        min_len, chunks, skip, trim = self._ours
        self.model.min_seq_len = int(self.cfg.trainer.max_len or 100) if on else min_len
        if seq is not None:
            seq.length_chunks = False if on else chunks
        if cross is not None:
            cross.skip_zeros = False if on else skip
        self.loader.trim_padding = trim and not on
        self.untrimmed = on

    def step(self, parts: dict[str, float] | None = None, batch: dict | None = None) -> int:
        """One optimizer step (on the next batch, or ``batch``); adds loader/optimizer
        seconds to ``parts`` (not under CUDA graphs); returns samples."""
        t0 = time.perf_counter()
        if batch is None:
            batch = next(self.batches)
        if parts is not None and self.graphed is None:
            self.sync()
            parts["loader"] = parts.get("loader", 0.0) + time.perf_counter() - t0
        else:
            parts = None
        if self.graphed is not None:
            self.graphed(batch)
        else:
            self._device_step(batch, parts)
        rows = int(batch["label"].shape[0])
        self.guard.count(rows)
        return rows

    def _device_step(self, batch: dict, parts: dict[str, float] | None = None) -> None:
        """The trainer's step (:class:`TrainStep`) on ``batch``; ``parts`` synchronises to
        time the optimizer apart; ``host_syncs`` adds the old step's two host waits."""
        from mmctr.data.dataset import HISTORY_COL
        from mmctr.models.base import trim_leading_padding

        if self.host_syncs:
            batch[HISTORY_COL] = trim_leading_padding(batch[HISTORY_COL], self.min_seq_len)
        bce = self.train_step.forward_backward(batch, 1.0, 1.0 / batch["label"].shape[0])
        if self.host_syncs and not math.isfinite(float(bce.detach())):
            raise FloatingPointError("loss became non-finite in the benchmark")
        if parts is not None:
            self.sync()
            t2 = time.perf_counter()
        self.train_step.optimizer_step()
        if parts is not None:
            self.sync()
            parts["optimizer"] = parts.get("optimizer", 0.0) + time.perf_counter() - t2

    def host_waits(self) -> dict[str, int]:
        """Ops of one step (the loader excluded) whose value the host waits for, by name."""
        from mmctr.training.guard import HostWaits

        batch = next(self.batches)
        with HostWaits(self.device) as waits:
            self.step(batch=batch)
        return dict(waits.ops)

    def check(self) -> None:
        """Raise if any step so far had a non-finite loss (one host wait)."""
        _, _, first_bad = self.guard.read()
        if first_bad is not None:
            raise FloatingPointError(f"loss became non-finite at benchmark step {first_bad}")

    def run_steps(self, n: int, parts: dict[str, float] | None = None) -> tuple[int, float]:
        """(samples, seconds) of ``n`` steps, synchronised at both ends."""
        self.sync()
        t = time.perf_counter()
        samples = sum(self.step(parts) for _ in range(n))
        self.sync()
        sec = time.perf_counter() - t
        self.check()
        return samples, sec

    def close(self) -> None:
        self.timer.remove()


def toggled(
    name: str,
    runner: StepRunner,
    modes: dict[str, Callable[[], None]],
    steps: int,
    repeats: int,
    seed: int = 0,
) -> dict[str, list[float]]:
    """samples/s of ONE runner switched between ``modes`` (label -> puts the runner in that
    mode), side by side on the same rows: every repeat draws ``steps`` batches of row indices
    once and each mode runs them, gathered afresh under its own loader settings; the order of
    the modes alternates between repeats, after one warm-up step per mode. Same weights and
    memory for every mode: two models side by side drift apart on a shared machine."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, b = runner.loader.split.n_rows, runner.batch_size
    labels = list(modes)

    def run(label: str, rows: list) -> float:
        modes[label]()
        batches = [runner.loader.gather(idx) for idx in rows]
        runner.sync()
        t = time.perf_counter()
        samples = sum(runner.step(batch=batch) for batch in batches)
        runner.sync()
        sec = time.perf_counter() - t
        runner.check()
        return samples / sec

    def draw(k: int) -> list:
        import torch

        return [torch.from_numpy(rng.choice(n, min(b, n), replace=False)) for _ in range(k)]

    warm = draw(1)
    for label in labels:
        run(label, warm)
    rates: dict[str, list[float]] = {label: [] for label in labels}
    for rep in range(repeats):
        rows = draw(steps)
        for label in labels if rep % 2 == 0 else labels[::-1]:
            rates[label].append(run(label, rows))
            harness.log(f"{name} repeat {rep + 1}: {label}: {rates[label][-1]:.1f} samples/s")
    return rates


def warm_up(runner: StepRunner, min_steps: int, max_steps: int, settled: float = 0.05) -> int:
    """Warm-up steps until the process stops taking new memory; returns how many ran.

    A fresh process faults in the pages its allocator then keeps (``keep_freed_memory``) over
    its first steps, and as the trimmed history width changes from batch to batch the heap
    keeps growing for a while: a CPU bf16 seed step took ~1M page faults in step 1 and
    40K-280K in most steps through step 9, which ran up to 1.6x slower than the settled
    ones (12-02). Training runs
    thousands of steps, so its rate is the settled one: after ``min_steps``, warm-up ends at
    the second step in a row with fewer than ``settled`` times the first step's page faults
    (on CUDA, where host page faults say nothing, after ``min_steps``)."""
    import resource

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    first, calm, n = None, 0, 0
    while n < max_steps:
        before = faults()
        runner.run_steps(1)
        n += 1
        f = faults() - before
        first = f if first is None else first
        calm = calm + 1 if f < settled * max(first, 1) else 0
        if n >= min_steps and (runner.device.type != "cpu" or calm >= 2):
            break
    return n


def measure_train(
    cfg,
    items,
    split,
    device,
    *,
    bf16: bool,
    steps: int,
    repeats: int,
    warmup_steps: int = 1,
    max_warmup_steps: int = 8,
    breakdown: bool = True,
    keep_model: bool = False,
    sequence_chunks: bool | None = None,
    untrimmed: bool = False,
    host_syncs: bool = False,
    cuda_graphs: bool = False,
) -> dict[str, Any]:
    """Samples/s of the training step (median of ``repeats`` runs of ``steps`` steps after
    at least ``warmup_steps`` and at most ``max_warmup_steps``, see :func:`warm_up`), and
    where a step's time goes. ``sequence_chunks`` forces the
    sequence encoder's length chunking on or off (default: off under CUDA bf16, else on).
    ``untrimmed``: no padding removal anywhere (the peers' compute pattern).
    ``host_syncs``: the step with the two host waits it had before the on-device guard.
    ``cuda_graphs``: the trainer's CUDA-graph step (3 eager warm-up steps, then replays;
    warm-up of at least 4 steps includes the recording; no breakdown)."""
    t = time.perf_counter()
    runner = StepRunner(
        cfg, items, split, device, bf16, sequence_chunks, untrimmed, host_syncs, cuda_graphs
    )
    breakdown = breakdown and not cuda_graphs
    build_s = time.perf_counter() - t
    warmup_steps = warm_up(runner, warmup_steps, max(warmup_steps, max_warmup_steps))
    waits = runner.host_waits()
    rates, step_secs, shares = [], [], []
    for _ in range(repeats):  # the rate: no hooks, no extra synchronisation
        samples, sec = runner.run_steps(steps)
        rates.append(samples / sec)
        step_secs.append(sec / steps)
    if breakdown:  # separate steps with the timing hooks (they slow the step themselves)
        runner.timer.enabled = True
        for _ in range(repeats):
            parts: dict[str, float] = {}
            _, sec = runner.run_steps(steps, parts)
            shares.append(_shares(parts, runner.timer.take(), sec))
        runner.timer.enabled = False
    out: dict[str, Any] = {
        "expid": cfg.expid,
        "samples_per_s": harness.median(rates),
        "step_seconds": harness.median(step_secs),
        "batch_size": runner.batch_size,
        "bf16": bf16,
        "device": str(device),
        "trainable_parameters": runner.n_params,
        "steps_per_repeat": steps,
        "repeats": repeats,
        "warmup_steps": warmup_steps,
        "model_build_seconds": build_s,
        "optimizer": type(runner.optimizer).__name__,
        # free on the CPU (the model trims there, chunking reads lengths); stalls on a GPU
        "host_waits_per_step": sum(waits.values()),
        "host_waits_by_op": waits,
        "cuda_graphs": runner.graphed.summary() if runner.graphed is not None else None,
    }
    seq = getattr(runner.model, "sequence", None)
    if seq is not None:
        chunks = seq.length_chunks
        default = seq.chunks_by_default(device.type == "cuda", bf16)
        out["sequence_chunks"] = default if chunks is None else bool(chunks)
    if shares:
        out["breakdown"] = {k: harness.median([s[k] for s in shares]) for k in shares[0]}
    runner.close()
    if keep_model:
        out["_runner"] = runner
    return out


def _shares(parts: dict[str, float], modules: dict[str, float], total: float) -> dict[str, float]:
    """Fractions of the step time: loader, each profiled module, optimizer, rest."""
    out = {"loader": parts.get("loader", 0.0) / total}
    for name, sec in modules.items():
        out[name] = sec / total
    out["optimizer"] = parts.get("optimizer", 0.0) / total
    out["rest"] = max(0.0, 1.0 - sum(out.values()))
    return out


def native_bf16(device) -> bool:
    import torch

    from mmctr.device import cpu_supports_bf16

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return cpu_supports_bf16()


# --------------------------------------------------------------------------- predict


def measure_predict(
    runner: StepRunner, split, rows: int, *, repeats: int, warmup_rows: int = 256
) -> dict[str, Any]:
    """Samples/s of ``predict_probs`` (the trainer's eval batch) over the first ``rows``
    rows of ``split``, after a warm-up on ``warmup_rows`` rows."""
    from mmctr.data.batching import BatchLoader
    from mmctr.training.trainer import predict_probs

    t = runner.cfg.trainer
    eval_bs = t.eval_batch_size or max(t.batch_size, 4096)
    rows = min(rows, split.n_rows)
    head = split.slice(0, rows)
    warm = split.slice(0, min(warmup_rows, rows))

    def loader(part):
        return BatchLoader(part, eval_bs, device=runner.device, min_seq_len=runner.min_seq_len)

    predict_probs(runner.model, loader(warm), bf16=runner.bf16)
    times = harness.timed_runs(
        lambda: predict_probs(runner.model, loader(head), bf16=runner.bf16),
        repeats,
        warmup=0,
        sync=runner.sync,
    )
    sec = harness.median(times)
    return {
        "samples_per_s": rows / sec,
        "seconds": sec,
        "rows": rows,
        "split": Path(split.path).stem,
        "eval_batch_size": eval_bs,
        "expid": runner.cfg.expid,
        "bf16": runner.bf16,
        "repeats": repeats,
    }


# ------------------------------------------------------------------------- embedding


def measure_embed(
    *, quick: bool, repeats: int, device, num_workers: int | None = None
) -> dict[str, Any]:
    """Decode rate (JPEG -> CLIP pixels in DataLoader workers) and the ViT-B/32 forward rate
    (random weights) on ready pixels, with scripts/bench_embed.py's functions."""
    import torch
    from bench_embed import bench_decode, bench_model, make_images

    from mmctr.embedding.encoder import (
        ImageFeatureExtractor,
        make_parallel,
        random_clip,
        resolve_amp,
    )

    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    n_images = 16 if quick else 256
    size = (320, 240) if quick else (480, 360)
    on_gpu = device.type == "cuda"
    model_batch = (256 if on_gpu else 2) if quick else (1024 if on_gpu else 16)
    model, processor = random_clip("vit-b32", seed=0)
    crop = processor.crop_size["height"]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mmctr_bench_") as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, n_images, size)
        paths = [str(folder / f"{i}.jpg") for i in range(1, n_images + 1)]
        # side by side: the pipeline's path (uint8 from the workers, normalised on the device)
        # and the whole processor in the workers (float32 pixels)
        rate, sec = bench_decode(processor, paths, 8, workers, repeats, 1, uint8=True)
        rate_f32, sec_f32 = bench_decode(processor, paths, 8, workers, repeats, 1)
    out["decode_images_per_s"] = rate
    out["decode"] = {
        "images": n_images,
        "image_size": list(size),
        "workers": workers,
        "seconds": sec,
        "processor_crop": crop,
        "pixels": "uint8 (rescale/normalise on the device)",
        "whole_processor_images_per_s": rate_f32,
        "speedup_vs_whole_processor": rate / rate_f32,
    }
    devices = (
        [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        if on_gpu
        else [device]
    )
    amp = resolve_amp(None, devices[0])  # bf16 on CUDA, none on the CPU (the pipeline's default)
    extractor = ImageFeatureExtractor(model, amp)
    runner = make_parallel(extractor, devices)
    rate, sec = bench_model(runner, crop, model_batch, devices[0], repeats, 1)
    out["vitb32_images_per_s"] = rate
    out["vitb32"] = {
        "batch_size": model_batch,
        "seconds": sec,
        "devices": [str(d) for d in devices],
        "amp": "none" if amp is None else str(amp).replace("torch.", ""),
        "weights": "random (architecture of openai/clip-vit-base-patch32)",
    }
    del runner, extractor, model
    return out


# ------------------------------------------------------------------------------ main


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def _get(d: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def check_targets(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of issue #10 with the measured value; ``met`` is None where this run
    cannot judge it (--quick, or a full-preset target on a smaller preset)."""
    full = result["preset"] == "full"
    out = {}
    for name, (op, target) in TARGETS.items():
        key = name.split(" ")[0]
        if result["quick"] or ("(full preset)" in name and not full):
            out[name] = {"target": f"{op} {target}", "measured": None, "met": None}
            continue
        value = _get(result, key)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out[name] = {"target": f"{op} {target}", "measured": value, "met": met}
    return out


def _prec(result: dict[str, Any], name: str) -> str:
    bf16 = _get(result, f"train.{name}.bf16")
    return "?" if bf16 is None else "bf16" if bf16 else "fp32"


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("loader-only, batch 4096 (samples/s)", _get(result, "loader.samples_per_s")),
        ("  same, 1 torch thread", _get(result, "loader.samples_per_s_one_thread")),
        ("load train+valid+test+items (s)", _get(result, "loader.load_seconds")),
        ("load peak RSS (GB, subprocess)", _get(result, "loader.peak_rss_gb")),
        ("peer fuxictr loader (samples/s)", _get(result, "peer.fuxictr_loader.samples_per_s")),
        (
            f"train seed, {_prec(result, 'seed')} (samples/s)",
            _get(result, "train.seed.samples_per_s"),
        ),
        ("  same, untrimmed (peers' compute)", _get(result, "train.seed.untrimmed.samples_per_s")),
        (
            f"train rank-1, {_prec(result, 'rank1')} (samples/s)",
            _get(result, "train.rank1.samples_per_s"),
        ),
        ("  same, untrimmed (peers' compute)", _get(result, "train.rank1.untrimmed.samples_per_s")),
    ]
    pair = _get(result, "train.bf16_pair") or {}
    for prec in ("fp32", "bf16"):
        if prec in pair:
            rows.append((f"train step {pair['label']}, {prec}", pair[prec]["samples_per_s"]))
    rows += [
        ("predict (samples/s)", _get(result, "predict.samples_per_s")),
        ("embed decode (images/s)", _get(result, "embed.decode_images_per_s")),
        ("embed ViT-B/32 model (images/s)", _get(result, "embed.vitb32_images_per_s")),
    ]
    width = max(len(r[0]) for r in rows)
    log("")
    log(f"== results ({result['timing']}) ==")
    for name, value in rows:
        if isinstance(value, float) and value < 100:
            text = f"{value:,.2f}"
        else:
            text = _fmt_rate(value)
        log(f"  {name:<{width}}  {text:>12}")
    log("")


def _describe_breakdown(name: str, tr: dict[str, Any]) -> str:
    b = tr.get("breakdown")
    if not b:
        return f"  {name}: no breakdown"
    parts = "  ".join(f"{k} {_pct(v)}" for k, v in b.items())
    return f"  {name} (step {tr['step_seconds']:.3f} s): {parts}"


def run(args) -> dict[str, Any]:
    import torch

    from mmctr.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick
    preset = "tiny" if quick else "full" if args.full else "demo"
    repeats = args.repeats or (1 if quick else 3)
    device = resolve_device(args.gpu)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "date": harness.now_iso(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": preset,
        "quick": quick,
        "device": str(device),
        "timing": f"median of {repeats} timed repeat(s) after warm-up",
        "machine": harness.machine_info(),
        "versions": harness.versions(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
    }
    notes: list[str] = []
    result["notes"] = notes
    m = result["machine"]
    log(
        f"{m['cpu_model']} ({m['cpu_cores']} cores, torch {result['versions']['torch']}, "
        f"{m['torch_cpu_capability']}, native bf16: {m['cpu_native_bf16']}); device {device}; "
        f"GPUs: {', '.join(g['name'] for g in m['gpus']) or 'none'}"
    )
    log(f"timing: {result['timing']}")

    # ---- data and loader
    data_dir = harness.ensure_data(preset, args.data_root)
    result["data_dir"] = str(data_dir)
    load = bd.measure_load(data_dir)
    cfg = harness.bench_config(bd.LOADER_EXPID, data_dir)
    items, splits, _ = harness.load_data(cfg, ("train", "valid"))
    train, valid = splits["train"], splits["valid"]
    kw = dict(repeats=repeats, warmup=1, min_seq_len=int(cfg.model.first_k_cols))
    rate = bd.loader_rate(train, 4096, seed=cfg.trainer.seed, **kw)
    rate1 = bd.loader_rate(train, 4096, seed=cfg.trainer.seed, threads=1, **kw)
    result["loader"] = {
        "samples_per_s": rate["samples_per_s"],
        "batch_size": 4096,
        "epoch_seconds": rate["epoch_seconds"],
        "torch_threads": rate["torch_threads"],
        "samples_per_s_one_thread": rate1["samples_per_s"],
        "load_seconds": load["load_seconds"],
        "load_seconds_by_file": load["seconds"],
        "peak_rss_gb": load["peak_rss_gb"],
        "baseline_rss_gb": load["baseline_rss_gb"],
        "rows": load["rows"],
        "n_items": load["n_items"],
        "history_width": load["history_width"],
    }
    log(
        f"load: {load['load_seconds']:.2f} s, peak RSS {load['peak_rss_gb']:.2f} GB "
        f"(subprocess; {load['baseline_rss_gb']:.2f} GB before loading); loader-only "
        f"{rate['samples_per_s']:,.0f} samples/s at batch 4096 with {rate['torch_threads']} "
        f"torch threads, {rate1['samples_per_s']:,.0f} with 1"
    )
    if args.no_peer:
        result["peer"] = {"fuxictr_loader": {"status": "skipped (--no-peer)"}}
    else:
        peer = bd.measure_fuxictr(data_dir, 4096, repeats=repeats, warmup=1)
        peer = bd.peer_entry(rate, peer)
        result["peer"] = {"fuxictr_loader": peer}
        log(bd.describe_peer(peer))

    # ---- training steps
    small = harness.demo_architecture_overrides()
    arch = small if quick else []
    if quick:
        notes.append(
            "--quick: the MMCTR experiments run with config/demo's architecture "
            "(" + ", ".join(small) + "); training figures are a smoke test, not comparable"
        )
    steps = {"seed": 1, "rank1": 1 if quick else 2}
    if args.train_steps:
        steps = dict.fromkeys(steps, args.train_steps)
    result["train"] = {}

    from mmctr.training.trainer import use_bf16

    if args.override:
        result["overrides"] = list(args.override)
        notes.append(
            "--override " + " ".join(args.override) + ": the training experiments are changed; "
            "their figures are not the shipped configs'"
        )

    def train_config(name: str):
        tcfg = harness.bench_config(EXPERIMENTS[name], data_dir, [*arch, *args.override])
        if tcfg.trainer.max_len != cfg.trainer.max_len:
            raise SystemExit(
                f"{tcfg.expid}: max_len {tcfg.trainer.max_len} differs from the loader's"
            )
        return tcfg

    for name, expid in EXPERIMENTS.items():
        # the precision the trainer would use: the config's bf16 (auto: AMX/AVX512-BF16 CPUs
        # and CUDA GPUs), so a target is judged on what training runs
        tcfg = train_config(name)
        bf16 = use_bf16(tcfg.trainer.bf16, device)
        tr = measure_train(
            tcfg,
            items,
            train,
            device,
            bf16=bf16,
            steps=steps[name],
            repeats=repeats,
            keep_model=True,
        )
        runner = tr.pop("_runner")
        tr["precision"] = f"{'bf16' if bf16 else 'fp32'} (bf16: {tcfg.trainer.bf16!r})"
        if quick:
            tr["overrides"] = small
        result["train"][name] = tr
        log(
            f"train {name:5s} ({expid}, batch {tr['batch_size']}, "
            f"{tr['trainable_parameters']:,} parameters, {tr['precision']}): "
            f"{tr['samples_per_s']:,.1f} samples/s, {tr['step_seconds']:.3f} s/step"
        )
        log(_describe_breakdown(name, tr))
        if name == "seed":  # prediction with the seed model
            pred_rows = valid.n_rows if quick else args.predict_rows
            pred = measure_predict(runner, valid, pred_rows, repeats=repeats)
            result["predict"] = pred
            log(
                f"predict ({pred['expid']}, {pred['rows']:,} {pred['split']} rows, eval batch "
                f"{pred['eval_batch_size']}): {pred['samples_per_s']:,.1f} samples/s"
            )
        # the same model without padding removal (the peers' compute pattern), side by side:
        # one model switched between the two, on the same rows, the order alternating
        rates = toggled(
            f"train {name} vs untrimmed",
            runner,
            {
                "ours": functools.partial(runner.set_untrimmed, False),
                "untrimmed": functools.partial(runner.set_untrimmed, True),
            },
            steps[name],
            repeats,
            seed=tcfg.trainer.seed,
        )
        ours_rate, ut_rate = harness.median(rates["ours"]), harness.median(rates["untrimmed"])
        tr["untrimmed"] = {
            "samples_per_s": ut_rate,
            "ours_samples_per_s": ours_rate,
            "per_repeat": rates,
            "repeats": repeats,
            "what": "same model, weights and rows, every history column through the "
            "Transformer (no trimming, no length chunks) and the dense cross network: the "
            "peers' compute pattern; measured against ours in turns (ours_samples_per_s)",
        }
        tr["speedup_vs_untrimmed"] = ours_rate / ut_rate
        log(
            f"train {name:5s} untrimmed (the peers' compute pattern): {ut_rate:,.1f} samples/s "
            f"against ours {ours_rate:,.1f} in turns -> {tr['speedup_vs_untrimmed']:.2f}x"
        )
        del runner

    # ---- fp32 against bf16 on the same step
    native = native_bf16(device)
    pair_expid = EXPERIMENTS["rank1"]
    pair_arch = arch if native else small
    label = "rank-1" + ("" if not pair_arch else " (demo architecture)")
    pair: dict[str, Any] = {"expid": pair_expid, "label": label, "native_bf16": native}
    if pair_arch:
        pair["overrides"] = pair_arch
    pair_steps = 1 if quick else 2
    for prec, flag in (("fp32", False), ("bf16", True)):
        pcfg = harness.bench_config(pair_expid, data_dir, [*pair_arch, f"bf16={str(flag).lower()}"])
        pr = measure_train(
            pcfg,
            items,
            train,
            device,
            bf16=flag,
            steps=pair_steps,
            repeats=repeats,
            breakdown=False,
        )
        pair[prec] = {k: pr[k] for k in ("samples_per_s", "step_seconds", "batch_size")}
        log(f"train step {label}, {prec}: {pr['samples_per_s']:,.1f} samples/s")
    pair["bf16_speedup"] = pair["bf16"]["samples_per_s"] / pair["fp32"]["samples_per_s"]
    if not native:
        note = (
            f"this {'CPU' if device.type == 'cpu' else 'device'} has no native bf16 "
            "(no AMX / AVX512-BF16): bf16 matrix products are emulated (bf16/fp32 step "
            f"speed {pair['bf16_speedup']:.2f}x here); the pair uses the demo architecture "
            "because a full-size bf16 step takes minutes. bf16 'auto' stays off."
        )
        pair["note"] = note
        notes.append(note)
        log(f"note: {note}")
    result["train"]["bf16_pair"] = pair

    # ---- embedding
    if args.no_embed:
        result["embed"] = {"decode_images_per_s": None, "vitb32_images_per_s": None}
        notes.append("embedding stage skipped (--no-embed)")
    else:
        emb = measure_embed(quick=quick, repeats=repeats, device=device)
        result["embed"] = emb
        log(
            f"embed: decode {emb['decode_images_per_s']:,.1f} images/s, "
            f"{emb['decode']['speedup_vs_whole_processor']:.2f}x the whole processor in the "
            f"workers ({emb['decode']['workers']} workers, {emb['decode']['image_size'][0]}x"
            f"{emb['decode']['image_size'][1]} JPEGs); ViT-B/32 {emb['vitb32_images_per_s']:,.1f} "
            f"images/s (batch {emb['vitb32']['batch_size']}, {', '.join(emb['vitb32']['devices'])})"
        )

    result["load_average_end"] = list(os.getloadavg())
    result["targets"] = check_targets(result)
    result["seconds"] = time.perf_counter() - started
    return result


#: the benchmarks besides ``suite``: name -> module of scripts/ (each has ``main(argv)``)
BENCHMARKS = {
    "data": "bench_data",
    "embed": "bench_embed",
    "ddp": "bench_ddp",
    "threads": "bench_threads",
}


def main(argv: list[str] | None = None) -> int:
    """``scripts/bench.py [NAME] [options]``: NAME's ``main(options)``; no NAME (or
    ``suite``): the whole-toolkit run below."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in BENCHMARKS:
        import importlib

        return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])
    if argv and argv[0] == "suite":
        argv = argv[1:]
    return suite(argv)


def suite(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bench.py [suite]",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny preset, small model, 1 repeat")
    size.add_argument("--full", action="store_true", help="the 3.6M-row preset")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--repeats", type=int, help="timed repeats (default 3; --quick 1)")
    p.add_argument("--train-steps", type=int, help="optimizer steps per timed repeat")
    p.add_argument("--predict-rows", type=int, default=2048, help="valid rows scored per repeat")
    p.add_argument("--gpu", type=int, default=-1, help="GPU index for train/predict (-1: CPU)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--no-peer", action="store_true", help="skip the FuxiCTR loader")
    p.add_argument("--no-embed", action="store_true", help="skip the embedding stage")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the seed and rank-1 experiments as run_expid.py --override does "
        "(e.g. cross_low_rank=64); repeatable",
    )
    p.add_argument("--data-root", help="where bench_<preset>/ lives (default: data/)")
    args = p.parse_args(argv)
    from mmctr.runtime import flush_denormals

    flush_denormals()  # as train() does
    result = run(args)
    print_table(result)
    for name, t in result["targets"].items():
        if t["measured"] is None:
            continue
        verdict = "met" if t["met"] else "NOT met"
        log(f"target {name} {t['target']}: {t['measured']:,.2f} -> {verdict}")
    for note in result["notes"]:
        log(f"note: {note}")
    log(f"total {result['seconds']:.1f} s")
    if args.json:
        harness.write_json(args.json, result)
        log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
