#!/usr/bin/env python
"""Loader benchmark (issue #4): load time, peak memory and loader-only samples/s.

    python scripts/bench.py data                  # demo preset (200K train rows)
    python scripts/bench.py data --full           # the 3.6M-row MicroLens_1M_x1-sized preset
    python scripts/bench.py data --quick --json bench_data.json

The data comes from the demo generator (``mmctr.data.demo.generate``, without images) and is
cached in ``data/bench_<preset>/``; it is generated only when absent or incomplete (the full
preset takes one to three minutes). The MMCTR dataset block (config/MMCTR, the rank-1
experiment) is loaded with its paths pointed at that folder, so the reader sees exactly the
columns, types and ``max_len`` of the real task.

What is measured:

- load: ``read_item_table`` + ``read_split`` of train/valid/test, in a SUBPROCESS that imports
  only what loading needs, so its peak RSS (``ru_maxrss``) is the loader's own;
- loader-only samples/s: one shuffled epoch of ``BatchLoader`` over the train split (the
  trainer's batches: permutation, gather, padding trim), batches of 1024 and 4096;
- the peer: FuxiCTR 2.3.10's parquet loader (Ray Data) over the same train file, when the
  optional ``requirements-bench.txt`` is installed; it runs in a subprocess (Ray starts its
  own processes) and never becomes a run-time dependency.

Every rate is the median of ``--repeats`` timed runs after a warm-up run (the harness:
``scripts/bench_harness.py``). ``scripts/bench.py`` and ``scripts/gpu_check.py`` use the
measurements here too.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_harness import (
    REPO,
    bench_config,
    ensure_data,
    load_data,
    log,
    machine_info,
    median,
    now_iso,
    timed_runs,
    versions,
    write_json,
)

LOADER_EXPID = "Transformer_DCN_rank1"  # its dataset block and max_len (100) drive the loader
PEER_MISSING = "peer: fuxictr not installed (pip install -r requirements-bench.txt)"
CHILD_TIMEOUT_S = 1200


def _maxrss_gb() -> float:
    """This process's peak RSS. Linux: VmHWM of /proc/self/status, because ``ru_maxrss``
    survives exec and would report the parent's size at fork time for a small child."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _child_load(data_dir: str) -> dict[str, Any]:
    import mmctr.config  # noqa: F401  (imports first: the baseline is the interpreter + them)
    import mmctr.data.dataset  # noqa: F401

    baseline = _maxrss_gb()
    cfg = bench_config(LOADER_EXPID, data_dir)
    t = time.perf_counter()
    items, splits, seconds = load_data(cfg)
    total = time.perf_counter() - t
    return {
        "load_seconds": total,
        "seconds": seconds,
        "peak_rss_gb": _maxrss_gb(),
        "baseline_rss_gb": baseline,
        "rows": {s: int(v.n_rows) for s, v in splits.items()},
        "n_items": int(items.n_items),
        "history_width": int(splits["train"].seq_width),
        "torch_imported": "torch" in sys.modules,
    }


def _run_child(args: list[str], timeout: float) -> dict[str, Any]:
    """Run this file with ``args`` in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"child {args[0]} failed (rc {proc.returncode}): " + " | ".join(tail))
    return json.loads(lines[-1])


def measure_load(data_dir: str | os.PathLike, timeout: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Load time and peak RSS of read_item_table + read_split(train/valid/test), measured in
    a subprocess that imports only the reader (``baseline_rss_gb``: its RSS after the
    imports, before loading; ``torch_imported``: whether importing the reader pulled torch)."""
    return _run_child(["--child-load", str(data_dir)], timeout)


# ----------------------------------------------------------------------- loader speed


def loader_rate(
    split,
    batch_size: int,
    *,
    repeats: int = 3,
    warmup: int = 1,
    min_seq_len: int = 16,
    seed: int = 2025,
    threads: int | None = None,
) -> dict[str, Any]:
    """Samples/s of one shuffled epoch of ``BatchLoader`` over ``split`` (CPU, loader only).

    ``threads``: torch intra-op threads during the measurement (None: leave as is, which is
    what the trainer runs with)."""
    import torch

    from mmctr.data.batching import BatchLoader

    loader = BatchLoader(split, batch_size, shuffle=True, seed=seed, min_seq_len=min_seq_len)
    epoch = iter(range(10**9))

    def one_epoch() -> None:
        loader.set_epoch(next(epoch))
        for _ in loader:
            pass

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        times = timed_runs(one_epoch, repeats, warmup)
    finally:
        torch.set_num_threads(before)
    sec = median(times)
    return {
        "samples_per_s": split.n_rows / sec,
        "epoch_seconds": sec,
        "batch_size": batch_size,
        "batches": len(loader),
        "rows": int(split.n_rows),
        "torch_threads": threads or before,
        "repeats": repeats,
        "warmup": warmup,
    }


def fuxictr_version() -> str | None:
    """The installed FuxiCTR version, or None (found without importing it: it imports Ray)."""
    if importlib.util.find_spec("fuxictr") is None:
        return None
    try:
        return metadata.version("fuxictr")
    except metadata.PackageNotFoundError:
        return "unknown"


def _child_fuxictr(train_path: str, batch_size: int, repeats: int, warmup: int) -> dict[str, Any]:
    import logging
    import types

    import pyarrow.parquet as pq

    logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        from fuxictr.pytorch.dataloaders.parquet_dataloader import ParquetDataLoader
    except ImportError as exc:
        return {"status": "import failed", "error": f"{type(exc).__name__}: {exc}"}
    import fuxictr

    # FuxiCTR reads the columns named by its feature map (+ labels); duck-typed here.
    cols = [c for c in pq.read_schema(train_path).names if c != "label"]
    fmap = types.SimpleNamespace(features={c: {} for c in cols}, labels=["label"])
    t = time.perf_counter()
    loader = ParquetDataLoader(
        fmap, train_path, split="train", batch_size=batch_size, shuffle=True, num_workers=1
    )
    init = time.perf_counter() - t
    counts = []

    def one_epoch() -> None:
        counts.append(sum(len(b["label"]) for b in loader))

    times = timed_runs(one_epoch, repeats, warmup)
    sec = median(times)
    return {
        "status": "ok",
        "version": getattr(fuxictr, "__version__", None),
        "samples_per_s": counts[-1] / sec,
        "epoch_seconds": sec,
        "init_seconds": init,
        "rows": counts[-1],
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "loader": "fuxictr.pytorch.dataloaders.parquet_dataloader.ParquetDataLoader (Ray Data)",
    }


def measure_fuxictr(
    data_dir: str | os.PathLike,
    batch_size: int,
    *,
    repeats: int = 3,
    warmup: int = 1,
    timeout: float = CHILD_TIMEOUT_S,
) -> dict[str, Any]:
    """FuxiCTR's own parquet loader over the same train file, shuffled, in a subprocess.

    ``{"status": "not installed", "message": PEER_MISSING}`` when fuxictr is absent."""
    version = fuxictr_version()
    if version is None:
        return {"status": "not installed", "message": PEER_MISSING}
    train_path = str(Path(data_dir).resolve() / "train.parquet")
    try:
        return _run_child(
            ["--child-fuxictr", train_path, str(batch_size), str(repeats), str(warmup)], timeout
        )
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"status": "failed", "version": version, "error": str(exc)[-500:]}


def peer_entry(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """The peer record with ``ratio`` = our samples/s / FuxiCTR's (same batch, same file)."""
    out = dict(peer)
    if peer.get("status") == "ok":
        out["ratio"] = ours["samples_per_s"] / peer["samples_per_s"]
    return out


def describe_peer(peer: dict[str, Any]) -> str:
    if peer.get("status") == "ok":
        return (
            f"peer: fuxictr {peer.get('version')} ParquetDataLoader {peer['samples_per_s']:,.0f} "
            f"samples/s (batch {peer['batch_size']}); ours is {peer['ratio']:.1f}x"
        )
    if peer.get("status") == "not installed":
        return PEER_MISSING
    return f"peer: fuxictr {peer.get('status')}: {peer.get('error', '')}"


# ------------------------------------------------------------------------------- main


def run(
    preset: str,
    *,
    batch_sizes: Sequence[int] = (1024, 4096),
    repeats: int = 3,
    warmup: int = 1,
    peer: bool = True,
    peer_repeats: int | None = None,
    data_root: str | None = None,
) -> dict[str, Any]:
    data_dir = ensure_data(preset, data_root)
    log(f"data: {data_dir} (preset {preset})")
    load = measure_load(data_dir)
    log(
        f"load (subprocess): {load['load_seconds']:.2f} s for {sum(load['rows'].values()):,} rows "
        f"+ {load['n_items']:,} items; peak RSS {load['peak_rss_gb']:.2f} GB "
        f"(interpreter + imports before loading: {load['baseline_rss_gb']:.2f} GB"
        f"{', torch imported' if load['torch_imported'] else ''})"
    )
    cfg = bench_config(LOADER_EXPID, data_dir)
    _, splits, _ = load_data(cfg, ("train",))
    train = splits["train"]
    min_seq = int(getattr(cfg.model, "first_k_cols", 1) or 1)
    rates, one_thread = {}, {}
    for bs in batch_sizes:
        kw = dict(repeats=repeats, warmup=warmup, min_seq_len=min_seq, seed=cfg.trainer.seed)
        rates[str(bs)] = loader_rate(train, bs, **kw)
        one_thread[str(bs)] = loader_rate(train, bs, threads=1, **kw)
        log(
            f"loader-only, batch {bs:>5}: {rates[str(bs)]['samples_per_s']:>12,.0f} samples/s "
            f"with {rates[str(bs)]['torch_threads']} torch threads, "
            f"{one_thread[str(bs)]['samples_per_s']:>12,.0f} with 1 "
            f"(shuffled epoch of {train.n_rows:,} rows, median of {repeats} after {warmup} warm-up)"
        )
    result: dict[str, Any] = {
        "date": now_iso(),
        "preset": preset,
        "data_dir": str(data_dir),
        "timing": f"median of {repeats} repeats after {warmup} warm-up",
        "load": load,
        "loader_samples_per_s": rates,
        "loader_samples_per_s_one_thread": one_thread,
    }
    if peer:
        bs = max(batch_sizes)
        p = measure_fuxictr(data_dir, bs, repeats=peer_repeats or repeats, warmup=warmup)
        p = peer_entry(rates[str(bs)], p)
        log(describe_peer(p))
        result["peer"] = {"fuxictr_loader": p}
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-load":
        print(json.dumps(_child_load(argv[1])), flush=True)
        return 0
    if argv and argv[0] == "--child-fuxictr":
        path, bs, reps, warm = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(_child_fuxictr(path, bs, reps, warm)), flush=True)
        return 0
    p = argparse.ArgumentParser(prog="bench.py data", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the 3.6M-row preset")
    size.add_argument("--quick", action="store_true", help="the tiny preset, one repeat")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--repeats", type=int, help="timed repeats (default 3; --quick 1)")
    p.add_argument("--no-peer", action="store_true", help="skip the FuxiCTR comparison")
    p.add_argument("--peer-repeats", type=int, help="timed FuxiCTR epochs (default --repeats)")
    p.add_argument("--data-root", help="where bench_<preset>/ lives (default: data/)")
    args = p.parse_args(argv)
    from mmctr.runtime import flush_denormals

    flush_denormals()  # as train() does
    preset = "full" if args.full else "tiny" if args.quick else "demo"
    repeats = args.repeats or (1 if args.quick else 3)
    started = time.perf_counter()
    result = run(
        preset,
        batch_sizes=args.batch_sizes,
        repeats=repeats,
        peer=not args.no_peer,
        peer_repeats=args.peer_repeats,
        data_root=args.data_root,
    )
    result["machine"] = machine_info()
    result["versions"] = versions()
    log(f"total {time.perf_counter() - started:.1f} s")
    if args.json:
        write_json(args.json, result)
        log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
