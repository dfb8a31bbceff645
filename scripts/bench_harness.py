"""The benchmarks' shared harness: timing, the machine and library versions, JSON output, the
generated bench data (``data/bench_<preset>/``), configs pointed at it, and a tiny
experiment folder. Used by every benchmark of ``scripts/bench.py`` and by
``scripts/gpu_check.py``; not a benchmark itself.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MMCTR_CONFIG = REPO / "config" / "MMCTR"
DEMO_CONFIG = REPO / "config" / "demo"
SPLITS = ("train", "valid", "test")

# The tests' tiny Transformer-DCN (tests/helpers.py), for benchmarks that run the real entry
# points on the tiny preset (ddp, threads).
TINY_MODEL = {
    "model": "Transformer_DCN",
    "dataset_id": "tiny",
    "embedding_dim": 8,
    "pretrained_proj_dim": 8,
    "transformer_layers": 1,
    "num_heads": 2,
    "dim_feedforward": 16,
    "transformer_dropout": 0.1,
    "first_k_cols": 2,
    "dcn_cross_layers": 1,
    "dcn_hidden_units": [16],
    "mlp_hidden_units": [8],
    "net_dropout": 0.1,
    "batch_size": 256,
    "learning_rate": 3e-3,
    "epochs": 2,
    "early_stop_patience": 5,
    "max_len": 24,
    "seed": 7,
    # fp32, whatever the CPU: tests that compare numbers exactly must not depend on whether this
    # machine has AVX512-BF16/AMX ("auto" turns bf16 autocast on there). bf16 is tested explicitly.
    "bf16": False,
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------ timing helpers


def timed_runs(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    times = []
    for r in range(warmup + repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        if r >= warmup:
            times.append(time.perf_counter() - t)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# ------------------------------------------------------------------ machine and versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the flags that decide bf16/AVX speed, memory, GPUs."""
    import torch

    flags = _cpu_flags()
    interesting = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1)})
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in interesting},
        "cpu_native_bf16": bool({"amx_bf16", "avx512_bf16"} & flags),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(mem_gb, 1) if mem_gb else None,
        "gpus": gpus,
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "numpy", "pyarrow", "pandas", "mmctr", "fuxictr"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if out["mmctr"] is None:  # PYTHONPATH=src without an install
        import mmctr

        out["mmctr"] = getattr(mmctr, "__version__", None)
    return out


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    from mmctr.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -------------------------------------------------------------------------- bench data


def _is_complete(data_dir: Path, preset: str) -> bool:
    import pyarrow.parquet as pq

    from mmctr.data.demo import PRESETS

    spec = PRESETS[preset]
    expected = {"item_info": spec.n_items, **{s: spec.rows(s) for s in SPLITS}}
    try:
        return all(
            pq.read_metadata(data_dir / f"{name}.parquet").num_rows == rows
            for name, rows in expected.items()
        )
    except (OSError, ValueError):
        return False


def ensure_data(
    preset: str, root: str | os.PathLike | None = None, seed: int = 2025, quiet: bool = False
) -> Path:
    """``<root>/bench_<preset>/`` with the generator's files for ``preset`` (no images);
    generated when absent or incomplete. ``root`` defaults to the repository's data/."""
    from mmctr.data.demo import generate

    data_dir = Path(root or REPO / "data") / f"bench_{preset}"
    if _is_complete(data_dir, preset):
        return data_dir
    if not quiet:
        log(f"generating the {preset} preset into {data_dir} (no images) ...")
    summary = generate(data_dir, preset=preset, seed=seed, images=False, progress=not quiet)
    if not quiet:
        log(f"generated in {summary['seconds']:.1f} s")
    return data_dir


def data_overrides(data_dir: str | os.PathLike) -> list[str]:
    """``key=value`` overrides that point a config's dataset block at ``data_dir``."""
    d = Path(data_dir).resolve()
    return [
        f"train_data={d / 'train.parquet'}",
        f"valid_data={d / 'valid.parquet'}",
        f"test_data={d / 'test.parquet'}",
        f"item_info={d / 'item_info.parquet'}",
        f"data_root={d.parent}",
    ]


def bench_config(
    expid: str,
    data_dir: str | os.PathLike,
    extra: Sequence[str] = (),
    config_dir: str | os.PathLike = MMCTR_CONFIG,
):
    """The experiment ``expid`` of ``config_dir`` (default config/MMCTR) on the bench data."""
    from mmctr.config import load_config

    return load_config(config_dir, expid, overrides=[*data_overrides(data_dir), *extra])


def demo_architecture_overrides() -> list[str]:
    """The model keys of config/demo's Transformer_DCN_demo as overrides: the first-place
    architecture shrunk to train in minutes on 2 CPU cores (used by --quick and dry runs)."""
    from dataclasses import fields

    from mmctr.config import load_config

    model = load_config(DEMO_CONFIG, "Transformer_DCN_demo").model
    return [
        f"{f.name}={json.dumps(getattr(model, f.name))}" for f in fields(model) if f.name != "model"
    ]


def load_data(cfg, splits: Sequence[str] = SPLITS) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """(item table, {split: SplitData}, seconds per step): what ``train`` and ``predict`` read."""
    from mmctr.data.dataset import read_item_table, read_split

    ds = cfg.dataset
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    items = read_item_table(ds.item_info, ds)
    seconds["item_info"] = time.perf_counter() - t
    out = {}
    for split in splits:
        t = time.perf_counter()
        out[split] = read_split(
            getattr(ds, f"{split}_data"),
            ds,
            n_items=items.n_items,
            max_len=cfg.trainer.max_len,
            require_label=split != "test",
        )
        seconds[split] = time.perf_counter() - t
    return items, out, seconds


def write_tiny_experiment(
    tmp_path: Path, data_dir: Path, expid: str = "tiny_exp", **params
) -> tuple[Path, str]:
    """A config folder (model_config.yaml + dataset_config.yaml) for the tiny preset in
    ``data_dir``: the tests' tiny model, ``params`` over it -> (config_dir, expid). The dataset
    block is the MicroLens one (``microlens_dataset_config``), as the drill writes it."""
    from dataclasses import asdict

    import yaml

    from mmctr.data.contract import microlens_dataset_config

    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    block = {**TINY_MODEL, "model_root": str(tmp_path / "ckpt"), **params}
    (cfg_dir / "model_config.yaml").write_text(yaml.safe_dump({"Base": {}, expid: block}))
    dataset = asdict(microlens_dataset_config(data_dir, dataset_id="tiny"))
    dataset.pop("dataset_id")
    (cfg_dir / "dataset_config.yaml").write_text(yaml.safe_dump({"tiny": dataset}))
    return cfg_dir, expid
