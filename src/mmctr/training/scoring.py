"""What training and prediction share: where a run lives, the bf16 choice, and scoring a
split with a model (click probabilities in file order; metrics, under torchrun too)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmctr.columns import TARGET_COL
from mmctr.data.batching import BatchLoader
from mmctr.data.dataset import SplitData
from mmctr.device import cpu_supports_bf16
from mmctr.progress import Progress
from mmctr.training.distributed import DistContext
from mmctr.training.metrics import evaluate_predictions
from mmctr.training.step import autocast_ctx


def run_dir_of(cfg) -> Path:
    return Path(cfg.trainer.model_root) / cfg.dataset.dataset_id / cfg.expid


def use_bf16(setting: bool | str, device: torch.device) -> bool:
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"bf16 must be true, false or 'auto', got {setting!r}")
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_supports_bf16()
    if setting and device.type == "cpu" and not cpu_supports_bf16():
        warnings.warn(
            "bf16: true on a CPU without AMX/AVX512-BF16: bf16 matrix products are emulated "
            "there and run many times slower than fp32 (use bf16: auto)",
            stacklevel=2,
        )
    return bool(setting)


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    loader: BatchLoader,
    *,
    bf16: bool = False,
    progress: bool = False,
    desc: str = "predict",
) -> np.ndarray:
    """Click probabilities of every row of ``loader`` (which must not shuffle), in file order."""
    if loader.shuffle:
        raise ValueError("predict_probs needs an unshuffled loader (file order)")
    model.eval()
    out = np.empty(loader.split.n_rows, dtype=np.float32)
    pos = 0
    bar = Progress(len(loader), desc, unit="batch", rate_unit="rows", enabled=progress)
    for batch in loader:
        with autocast_ctx(loader.device, bf16):
            logits = model(batch)
        p = torch.sigmoid(logits.float()).cpu().numpy()
        out[pos : pos + len(p)] = p
        pos += len(p)
        bar.update(1, rows=len(p))
    bar.close()
    assert pos == loader.split.n_rows
    return out


def evaluate_split(
    model: nn.Module,
    split: SplitData,
    dist: DistContext,
    *,
    batch_size: int,
    device: torch.device,
    min_seq_len: int,
    bf16: bool,
    cold_items: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics over the whole split; under torchrun each rank scores a contiguous share and the
    shares are gathered, so every row counts exactly once."""
    lo = split.n_rows * dist.rank // dist.world_size
    hi = split.n_rows * (dist.rank + 1) // dist.world_size
    part = split.slice(lo, hi) if dist.enabled else split
    loader = BatchLoader(part, batch_size, device=device, min_seq_len=min_seq_len)
    probs = predict_probs(model, loader, bf16=bf16)
    probs = np.concatenate(dist.all_gather_object(probs)) if dist.enabled else probs
    metrics: dict[str, Any] = evaluate_predictions(split.labels, probs, split.groups)
    if cold_items is not None:
        cold = np.isin(split.columns[TARGET_COL], cold_items, invert=True)
        if cold.any() and (~cold).any():
            metrics["cold_AUC"] = evaluate_predictions(split.labels[cold], probs[cold])["AUC"]
            metrics["warm_AUC"] = evaluate_predictions(split.labels[~cold], probs[~cold])["AUC"]
            metrics["cold_rows"] = int(cold.sum())
    return metrics
