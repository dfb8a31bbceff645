"""Checkpoints that survive a kill and rebuild their model without the training data.

- ``model.pt``: best weights + the resolved config + item-table shapes, so
  :func:`load_model` rebuilds the model from the file alone (prediction reads no training data;
  the item tables travel inside the weights as buffers).
- ``last.pt``: model, optimizer, trainer state (epoch, step, best metric, patience, lr,
  history) and every RNG state, for ``--resume``.

Both are written to a temp file and renamed: a crash mid-write leaves the previous file.

Both hold only tensors and plain Python values, and :func:`load_checkpoint` reads them with
``torch.load(weights_only=True)``: a checkpoint received from someone else cannot run code.
A file whose pickle names anything outside torch's weights-only allowlist (``os.system``, a
class with ``__reduce__``) is refused with a :class:`CheckpointError` before any of it runs.
"""

from __future__ import annotations

import pickle
import warnings
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


def plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays made Python values / lists (tensors kept), so
    that a weights-only load reads it back: a numpy float64 in a metric would otherwise make
    the whole checkpoint refused."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return obj


def save_best(
    path: Path, model: torch.nn.Module, config: dict, items_shapes: dict, info: dict
) -> None:
    atomic_torch_save(
        {
            "format": "mmctr.model/1",
            "mmctr_version": __version__,
            "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": plain(config),
            "item_tables": plain(items_shapes),
            **plain(info),
        },
        path,
    )


def rng_states() -> dict[str, Any]:
    import random

    states = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_plain(np.random.get_state()),  # noqa: NPY002 (global state)
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _numpy_state_plain(state: tuple) -> tuple:
    """numpy's legacy RNG state with its key array as a list of ints (weights_only loads it)."""
    name, keys, pos, has_gauss, cached = state
    return (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached))


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]  # keys: a list (or an ndarray in an old last.pt)
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
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
            "trainer_state": plain(state),
            "rng": rng_per_rank[0] if rng_per_rank else rng_states(),
            "rng_per_rank": rng_per_rank,
            "config": plain(config),
        },
        path,
    )


class CheckpointError(ValueError):
    """A file that is not the checkpoint asked for (unreadable, another kind, or unsafe)."""


# Older last.pt files of this project hold numpy's RNG key array (an ndarray of uint32): these
# are exactly the globals needed to rebuild it, and none of them runs code of the file's choice.
_OLD_LAST_PT_GLOBALS = [
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    (np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
    (np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),  # numpy 1.x
]


def _unsafe_globals(path: Path, exc: pickle.UnpicklingError) -> str | None:
    """The globals beyond the allowlist that the file's pickle names (read, never run), or
    None when the weights-only unpickler stopped at something else (a malformed file)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (a bare pickle)
        found = []
    allowed = {"numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType"}
    unsafe = [g for g in found if g not in allowed and not g.endswith("multiarray._reconstruct")]
    if unsafe:
        return ", ".join(unsafe)
    why = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
    return why[0] if why else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_checkpoint(path: str | Path) -> dict:
    """An mmctr checkpoint, read with ``torch.load(weights_only=True)`` (see the module
    docstring): a :class:`CheckpointError` for a file that is unreadable, not ours, or that
    would need to run code to load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_OLD_LAST_PT_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" on bare pickles
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, exc)
        if unsafe is None:
            why = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln]
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint (weights-only unpickler: "
                f"{why[0] if why else 'malformed'}); nothing from the file was run"
            ) from None
        raise CheckpointError(
            f"{path} was refused: loading it could run code from the file (it names "
            f"{unsafe}); an mmctr checkpoint holds only tensors and plain values (expected "
            "model.pt or last.pt written by run_expid.py). Nothing from the file was run."
        ) from None
    except Exception as exc:  # zip and torch's own errors: all mean "not a checkpoint"
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({_first_line(exc)})"
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
