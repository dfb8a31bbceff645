#!/usr/bin/env python
"""Throughput of stage 1 (generate_embeddings), in images per second.

    python scripts/bench.py embed --quick                  # well under a minute on 2 CPU cores
    python scripts/bench.py embed --json bench_embed.json  # fuller run, results as JSON

Three measurements per model and device, each a median over repeats after a warm-up:

- decode: DataLoader workers reading JPEGs + the model's image processor (CPU only);
- model: the DataParallel-wrapped feature extractor on ready pixel tensors;
- end-to-end: ``generate_embeddings`` itself (decode workers + model + cache writes), the
  images/s of its encoding loop; PCA and the parquet write are not timed.

Models: the ViT-B/32 architecture (openai/clip-vit-base-patch32's shape, random weights:
speed does not depend on the weights) and the tiny test model. Devices: the CPU, and all
visible GPUs (DataParallel, bf16 autocast) when CUDA is available. The images are synthetic
JPEGs (smooth colour fields + noise) of --image-size pixels.

Batches: the model stage uses the device's batch (large on a GPU); the decode and end-to-end
stages use at most that, small enough that every decode worker gets at least
MIN_BATCHES_PER_WORKER batches (a DataLoader hands whole batches to its workers: one batch of
all the images would be decoded by one worker), end-to-end no smaller than MIN_E2E_BATCH.
With CUDA more images are generated, so that the GPU end-to-end run keeps sizeable batches.
Each line prints its batch, its images and the decode workers that got any batch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# defaults: full run / --quick
N_IMAGES = {"full": 512, "quick": 32}  # images per pass (CPU)
N_IMAGES_CUDA = {"full": 4096, "quick": 1024}  # with CUDA: enough for GPU-sized batches
IMAGE_SIZE = {"full": (480, 360), "quick": (320, 240)}
REPEATS = {"full": 5, "quick": 2}  # timed repeats of decode and model
E2E_REPEATS = {"full": 3, "quick": 1}
MODEL_BATCH = {  # images per model call
    "cpu": {"full": {"vit-b32": 64, "tiny": 256}, "quick": {"vit-b32": 4, "tiny": 32}},
    "cuda": {"full": {"vit-b32": 1024, "tiny": 1024}, "quick": {"vit-b32": 256, "tiny": 1024}},
}
# a ViT-B/32 forward costs ~4.4 GFLOP per image: a few images only on a small CPU
VIT_CPU_E2E_IMAGES_QUICK = 4
MIN_BATCHES_PER_WORKER = 4
# end-to-end: no model call on fewer images than this (or the model batch, if smaller); with
# very few images (ViT-B/32 on the CPU) the model, not the decode, is what is timed there
MIN_E2E_BATCH = 8


def pick_batch(n_images: int, num_workers: int, cap: int, floor: int = 1) -> int:
    """The largest batch <= ``cap`` that gives each of ``num_workers`` decode workers (0: in
    process, counted as one) at least MIN_BATCHES_PER_WORKER batches of ``n_images``, but not
    below ``min(cap, floor)`` nor 1 (too few images: fewer batches per worker)."""
    slots = max(1, num_workers) * MIN_BATCHES_PER_WORKER
    return max(1, min(cap, floor), min(cap, n_images // slots))


def busy_workers(n_images: int, batch_size: int, num_workers: int) -> int:
    """Decode workers that get any batch: the DataLoader hands whole batches round robin."""
    if num_workers <= 0:
        return 0
    return min(num_workers, math.ceil(n_images / batch_size))


def plan(
    archs: list[str], *, quick: bool, cuda: bool, num_workers: int, n_images: int | None = None
) -> dict:
    """Image counts and batch sizes of every stage; no torch, so the CUDA plan can be checked
    on any machine. ``n_images``: --n-images (None: the defaults).

    Returns ``{"n_images": images generated (the decode stage reads them all),
    "decode_batch": {arch: batch}, "devices": {"cpu" | "cuda": {arch: {"model_batch",
    "e2e_images", "e2e_batch"}}}}`` ("cuda" only with ``cuda``).
    """
    mode = "quick" if quick else "full"
    n_cpu = n_images or N_IMAGES[mode]
    n_gpu = n_images or max(n_cpu, N_IMAGES_CUDA[mode])
    n_all = n_gpu if cuda else n_cpu
    cpu_e2e = {"vit-b32": VIT_CPU_E2E_IMAGES_QUICK if quick else n_cpu}
    devices: dict[str, dict[str, dict[str, int]]] = {}
    for kind in ("cpu", "cuda") if cuda else ("cpu",):
        devices[kind] = {}
        for arch in archs:
            model_batch = MODEL_BATCH[kind][mode][arch]
            n_e2e = cpu_e2e.get(arch, n_cpu) if kind == "cpu" else n_gpu
            devices[kind][arch] = {
                "model_batch": model_batch,
                "e2e_images": n_e2e,
                "e2e_batch": pick_batch(n_e2e, num_workers, model_batch, MIN_E2E_BATCH),
            }
    decode = {a: pick_batch(n_all, num_workers, MODEL_BATCH["cpu"][mode][a]) for a in archs}
    return {"n_images": n_all, "decode_batch": decode, "devices": devices}


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(1, n + 1):
        a, b, c = rng.uniform(0.005, 0.05, size=3)
        base = np.stack(
            [
                128 + 100 * np.sin(a * xx + b * yy),
                128 + 100 * np.cos(b * xx - c * yy),
                128 + 100 * np.sin(c * xx + a * yy),
            ],
            axis=-1,
        )
        arr = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i}.jpg", quality=90)


def _median_rate(n_images: int, seconds: list[float]) -> tuple[float, float]:
    med = statistics.median(seconds)
    return n_images / med, med


def bench_decode(processor, paths, batch_size, num_workers, repeats, warmup, uint8=False):
    """Images/s of the DataLoader alone. ``uint8``: the workers stop before rescale/normalise
    (what the pipeline does when ``split_processor`` allows it)."""
    from mmctr.embedding.images import ItemImageDataset, make_loader

    ids = list(range(1, len(paths) + 1))
    dataset = ItemImageDataset(ids, paths, processor, uint8=uint8)
    loader = make_loader(dataset, batch_size, num_workers)
    times = []
    for r in range(warmup + repeats):
        t = time.perf_counter()
        n = sum(len(b.item_ids) for b in loader)
        if r >= warmup:
            times.append(time.perf_counter() - t)
    return _median_rate(n, times)


def bench_model(runner, image_size, batch_size, device, repeats, warmup):
    import torch

    pixels = torch.randn(batch_size, 3, image_size, image_size)
    if device.type == "cuda":
        pixels = pixels.pin_memory()
    times = []
    for r in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = runner(pixels).cpu()  # the copy back waits for the GPU
        if r >= warmup:
            times.append(time.perf_counter() - t)
    assert out.shape[0] == batch_size
    return _median_rate(batch_size, times)


def bench_end_to_end(model_dir, info, images, gpu, batch_size, num_workers, repeats, dim, cache):
    from mmctr.embedding import generate_embeddings

    rates, seconds = [], []
    for r in range(repeats):
        s = generate_embeddings(
            info,
            images,
            model=str(model_dir),
            out=cache / "item_info.out.parquet",
            dim=dim,
            batch_size=batch_size,
            num_workers=num_workers,
            gpu=gpu,
            cache_dir=cache / f"cache_{r}",
            force=True,
            progress=False,
        )
        rates.append(s["images_per_s"])
        seconds.append(s["encode_seconds"])
    return statistics.median(rates), statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.py embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few images and repeats (< 1 minute)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--n-images",
        type=int,
        help=f"images generated and decoded per pass (default {N_IMAGES['full']}, quick "
        f"{N_IMAGES['quick']}; with CUDA {N_IMAGES_CUDA['full']}, quick "
        f"{N_IMAGES_CUDA['quick']}, the CPU end-to-end run keeping the CPU count)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        help="JPEG size (default {}x{}; quick {}x{})".format(
            *IMAGE_SIZE["full"], *IMAGE_SIZE["quick"]
        ),
    )
    p.add_argument(
        "--repeats",
        type=int,
        help=f"timed repeats (default {REPEATS['full']}; quick {REPEATS['quick']}); "
        f"end-to-end: {E2E_REPEATS['full']}; quick {E2E_REPEATS['quick']}",
    )
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--archs", nargs="+", default=["vit-b32", "tiny"], help="vit-b32 tiny")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPUs")
    args = p.parse_args(argv)
    started = time.perf_counter()

    import torch

    from mmctr.runtime import flush_denormals

    flush_denormals()  # as generate_embeddings() does
    from mmctr.embedding.encoder import (
        ImageFeatureExtractor,
        build_random_clip,
        describe_model,
        load_image_model,
        make_parallel,
        resolve_amp,
    )

    quick = args.quick
    mode = "quick" if quick else "full"
    if args.n_images is not None and args.n_images < 1:
        p.error("--n-images must be at least 1")
    bad = sorted(set(args.archs) - set(MODEL_BATCH["cpu"][mode]))
    if bad:
        p.error(f"unknown --archs {bad}; choose from {sorted(MODEL_BATCH['cpu'][mode])}")
    num_workers = args.num_workers
    cuda = torch.cuda.is_available() and not args.cpu_only
    runs = plan(args.archs, quick=quick, cuda=cuda, num_workers=num_workers, n_images=args.n_images)
    n_images = runs["n_images"]
    size = tuple(args.image_size or IMAGE_SIZE[mode])
    repeats = args.repeats or REPEATS[mode]
    e2e_repeats = E2E_REPEATS[mode]
    warmup = 1
    # (name, gpu argument, per arch: model batch, end-to-end images and batch)
    devices = [("cpu", -1, runs["devices"]["cpu"])]
    if cuda:
        n_dev = torch.cuda.device_count()
        devices.append((f"cuda x{n_dev}", list(range(n_dev)), runs["devices"]["cuda"]))

    results = []

    def record(arch, device, stage, rate, seconds, bs, n, reps, workers=None):
        results.append(
            dict(arch=arch, device=device, stage=stage, images_per_s=round(rate, 2))
            | dict(seconds=round(seconds, 4), batch_size=bs, n_images=n, repeats=reps)
            | ({} if workers is None else {"decode_workers": workers})
        )
        used = "" if workers is None else f", {workers} decode worker(s)"
        print(
            f"{arch:8s} {device:9s} {stage:11s} {rate:10.1f} img/s"
            f"   (batch {bs}, {n} images{used}, median of {reps})",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        make_images(images, n_images, size)
        import pyarrow as pa
        import pyarrow.parquet as pq

        infos = {}
        counts = {n_images} | {r["e2e_images"] for *_, by in devices for r in by.values()}
        for n in sorted(counts):
            infos[n] = tmp / f"item_info_{n}.parquet"
            pq.write_table(pa.table({"item_id": pa.array(range(n + 1), pa.int64())}), infos[n])
        paths = [str(images / f"{i}.jpg") for i in range(1, n_images + 1)]
        print(
            f"{n_images} synthetic {size[0]}x{size[1]} JPEGs, up to {num_workers} decode "
            f"worker(s) (each line: those that got batches), torch {torch.__version__}, "
            f"{os.cpu_count()} CPU(s)",
            flush=True,
        )
        for arch in args.archs:
            model_dir = build_random_clip(tmp / arch, arch=arch, seed=0)
            spec = describe_model(str(model_dir))
            crop = spec.processor.crop_size["height"]
            bs = runs["decode_batch"][arch]
            rate, sec = bench_decode(spec.processor, paths, bs, num_workers, repeats, warmup)
            used = busy_workers(n_images, bs, num_workers)
            record(arch, "cpu", "decode", rate, sec, bs, n_images, repeats, used)
            model = load_image_model(spec)
            for dev_name, gpu, by_arch in devices:
                run = by_arch[arch]
                device = torch.device("cpu" if gpu == -1 else f"cuda:{gpu[0]}")
                devs = [device] if gpu == -1 else [torch.device(f"cuda:{g}") for g in gpu]
                extractor = ImageFeatureExtractor(model, resolve_amp(None, device))
                runner = make_parallel(extractor, devs)
                bs = run["model_batch"]
                rate, sec = bench_model(runner, crop, bs, device, repeats, warmup)
                record(arch, dev_name, "model", rate, sec, bs, bs, repeats)
                n_e2e, bs = run["e2e_images"], run["e2e_batch"]
                rate, sec = bench_end_to_end(
                    model_dir,
                    infos[n_e2e],
                    images,
                    gpu,
                    bs,
                    num_workers,
                    e2e_repeats,
                    min(16, n_e2e, spec.raw_dim or 16),
                    tmp / f"e2e_{arch}_{gpu if gpu == -1 else 'cuda'}",
                )
                used = busy_workers(n_e2e, bs, num_workers)
                record(arch, dev_name, "end-to-end", rate, sec, bs, n_e2e, e2e_repeats, used)
                model.to("cpu")

    print(f"total {time.perf_counter() - started:.1f} s (setup and imports included)")
    if args.json:
        from mmctr.atomic import atomic_write_text

        env = {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "cuda_devices": [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
            if torch.cuda.is_available()
            else [],
            "quick": quick,
            "image_size": list(size),
            "num_workers": num_workers,
            "min_batches_per_worker": MIN_BATCHES_PER_WORKER,
        }
        atomic_write_text(args.json, json.dumps({"env": env, "results": results}, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
