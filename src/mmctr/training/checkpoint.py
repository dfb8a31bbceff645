"""Checkpoints that survive a kill and rebuild their model without the training data.

- ``model.pt``: best weights + the resolved config + item-table shapes, so
  :func:`load_model` rebuilds the model from the file alone (prediction reads no training data;
  the item tables travel inside the weights as buffers).
- ``last.pt``: model, optimizer, trainer state (epoch, step, best metric, patience, lr,
  history) and every RNG state, for ``--resume``.

Both are written to a temp file and renamed: a crash mid-write leaves the previous file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmctr import __version__
from mmctr.atomic import atomic_torch_save
from mmctr.data.dataset import ItemTable


def item_table_shapes(items: ItemTable) -> dict[str, Any]:
    return {
        "n_items": items.n_items,
        "features": {k: [list(v.shape), str(v.dtype)] for k, v in items.features.items()},
    }


def empty_item_table(shapes: dict[str, Any]) -> ItemTable:
    """Zero tables of the saved shapes; the real values come with the state dict."""
    feats = {k: np.zeros(shape, dtype=dtype) for k, (shape, dtype) in shapes["features"].items()}
    return ItemTable(n_items=int(shapes["n_items"]), features=feats)


def save_best(
    path: Path, model: torch.nn.Module, config: dict, items_shapes: dict, info: dict
) -> None:
    atomic_torch_save(
        {
            "format": "mmctr.model/1",
            "mmctr_version": __version__,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": config,
            "item_tables": items_shapes,
            **info,
        },
        path,
    )


def rng_states() -> dict[str, Any]:
    import random

    states = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (global state is what we restore)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_last(
    path: Path,
    model: torch.nn.Module,
    optimizer,
    state: dict,
    config: dict,
    rng_per_rank: list[dict[str, Any]] | None = None,
) -> None:
    """``rng_per_rank``: every torchrun rank's :func:`rng_states` (rank 0's are ``rng``)."""
    atomic_torch_save(
        {
            "format": "mmctr.last/1",
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer_state": optimizer.state_dict(),
            "trainer_state": state,
            "rng": rng_per_rank[0] if rng_per_rank else rng_states(),
            "rng_per_rank": rng_per_rank,
            "config": config,
        },
        path,
    )


class CheckpointError(ValueError):
    """A file that is not the checkpoint asked for (unreadable, or another kind)."""


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle, zip and torch's own errors: all mean "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise CheckpointError(f"{path} is not an mmctr checkpoint (no 'format' entry)")
    return ckpt


def load_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild the model of a ``model.pt`` -> (model in eval mode, ExperimentConfig, checkpoint)."""
    from mmctr.config import ExperimentConfig
    from mmctr.models import build_model

    ckpt = load_checkpoint(path)
    if ckpt["format"] != "mmctr.model/1":
        hint = (
            ": last.pt is for --resume; the best weights are model.pt in the same folder"
            if ckpt["format"] == "mmctr.last/1"
            else ""
        )
        raise CheckpointError(
            f"{path} is not an mmctr model checkpoint (format {ckpt['format']!r}){hint}"
        )
    cfg = ExperimentConfig.from_dict(ckpt["config"])
    model = build_model(cfg.model, cfg.dataset, empty_item_table(ckpt["item_tables"]))
    model.load_state_dict(ckpt["model_state"])
    model.to(device).eval()
    return model, cfg, ckpt
