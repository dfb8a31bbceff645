#!/usr/bin/env python
"""Throughput of stage 1 (generate_embeddings), in images per second.

    python scripts/bench_embed.py --quick                  # well under a minute on 2 CPU cores
    python scripts/bench_embed.py --json bench_embed.json  # fuller run, results as JSON

Three measurements per model and device, each a median over repeats after a warm-up:

- decode: DataLoader workers reading JPEGs + the model's image processor (CPU only);
- model: the DataParallel-wrapped feature extractor on ready pixel tensors;
- end-to-end: ``generate_embeddings`` itself (decode workers + model + cache writes), the
  images/s of its encoding loop; PCA and the parquet write are not timed.

Models: the ViT-B/32 architecture (openai/clip-vit-base-patch32's shape, random weights:
speed does not depend on the weights) and the tiny test model. Devices: the CPU, and all
visible GPUs (DataParallel, bf16 autocast) when CUDA is available. The images are synthetic
JPEGs (smooth colour fields + noise) of --image-size pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few images and repeats (< 1 minute)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--n-images", type=int, help="images per pass (default 512; quick 48)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("W", "H"), help="JPEG size")
    p.add_argument("--repeats", type=int, help="timed repeats (default 5; quick 3)")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--archs", nargs="+", default=["vit-b32", "tiny"], help="vit-b32 tiny")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPUs")
    args = p.parse_args(argv)
    started = time.perf_counter()

    import torch

    from mmctr.embedding.encoder import (
        ImageFeatureExtractor,
        build_random_clip,
        describe_model,
        load_image_model,
        make_parallel,
        resolve_amp,
    )

    quick = args.quick
    n_images = args.n_images or (32 if quick else 512)
    size = tuple(args.image_size or ((320, 240) if quick else (480, 360)))
    repeats = args.repeats or (2 if quick else 5)
    e2e_repeats = 1 if quick else 3
    warmup = 1
    batch = {"vit-b32": 4 if quick else 64, "tiny": 32 if quick else 256}
    # a ViT-B/32 forward costs ~4.4 GFLOP per image: a few images only on a small CPU
    e2e_images = {"vit-b32": 4 if quick else n_images, "tiny": n_images}
    devices = [("cpu", -1)]
    if torch.cuda.is_available() and not args.cpu_only:
        n_gpu = torch.cuda.device_count()
        devices.append((f"cuda x{n_gpu}", list(range(n_gpu))))
        batch = {"vit-b32": 256 if quick else 1024, "tiny": 1024}

    results = []

    def record(arch, device, stage, rate, seconds, bs, n, reps):
        results.append(
            dict(arch=arch, device=device, stage=stage, images_per_s=round(rate, 2))
            | dict(seconds=round(seconds, 4), batch_size=bs, n_images=n, repeats=reps)
        )
        print(
            f"{arch:8s} {device:9s} {stage:11s} {rate:10.1f} img/s"
            f"   (batch {bs}, {n} images, median of {reps})",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        make_images(images, n_images, size)
        import pyarrow as pa
        import pyarrow.parquet as pq

        infos = {}
        for n in sorted({n_images, *e2e_images.values()}):
            infos[n] = tmp / f"item_info_{n}.parquet"
            pq.write_table(pa.table({"item_id": pa.array(range(n + 1), pa.int64())}), infos[n])
        paths = [str(images / f"{i}.jpg") for i in range(1, n_images + 1)]
        print(
            f"{n_images} synthetic {size[0]}x{size[1]} JPEGs, {args.num_workers} decode "
            f"worker(s), torch {torch.__version__}, {os.cpu_count()} CPU(s)",
            flush=True,
        )
        for arch in args.archs:
            model_dir = build_random_clip(tmp / arch, arch=arch, seed=0)
            spec = describe_model(str(model_dir))
            crop = spec.processor.crop_size["height"]
            rate, sec = bench_decode(
                spec.processor, paths, batch[arch], args.num_workers, repeats, warmup
            )
            record(arch, "cpu", "decode", rate, sec, batch[arch], n_images, repeats)
            model = load_image_model(spec)
            for dev_name, gpu in devices:
                device = torch.device("cpu" if gpu == -1 else f"cuda:{gpu[0]}")
                devs = [device] if gpu == -1 else [torch.device(f"cuda:{g}") for g in gpu]
                extractor = ImageFeatureExtractor(model, resolve_amp(None, device))
                runner = make_parallel(extractor, devs)
                bs = batch[arch]
                rate, sec = bench_model(runner, crop, bs, device, repeats, warmup)
                record(arch, dev_name, "model", rate, sec, bs, bs, repeats)
                n_e2e = e2e_images[arch] if gpu == -1 else n_images
                rate, sec = bench_end_to_end(
                    model_dir,
                    infos[n_e2e],
                    images,
                    gpu,
                    bs,
                    args.num_workers,
                    e2e_repeats,
                    min(16, n_e2e, spec.raw_dim or 16),
                    tmp / f"e2e_{arch}_{gpu if gpu == -1 else 'cuda'}",
                )
                record(arch, dev_name, "end-to-end", rate, sec, bs, n_e2e, e2e_repeats)
                model.to("cpu")

    print(f"total {time.perf_counter() - started:.1f} s (setup and imports included)")
    if args.json:
        from mmctr.utils import atomic_write_text

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
            "num_workers": args.num_workers,
        }
        atomic_write_text(args.json, json.dumps({"env": env, "results": results}, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
