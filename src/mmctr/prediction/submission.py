"""The submission: ``prediction.csv`` (header ``ID,<column>``, ID = test row 0..N-1 in file
order) and ``<expid>.zip`` holding it at the zip root, validated before anything is written.

The model and its resolved config come from the checkpoint alone; the training data is never
read. Rows are scored in contiguous slices, so the i-th probability belongs to the i-th row of
the test file (FuxiCTR 2.3.10's parquet loader scrambles this order).
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mmctr.atomic import atomic_open
from mmctr.data.batching import BatchLoader
from mmctr.data.dataset import read_split
from mmctr.device import resolve_device
from mmctr.runtime import flush_denormals, keep_freed_memory
from mmctr.threads import configure_threads
from mmctr.training import checkpoint as ckpt_io
from mmctr.training.metrics import auc
from mmctr.training.scoring import predict_probs, run_dir_of, use_bf16

SUBMISSION_COLUMNS = ("Task1", "Task2", "Task1&2")


class SubmissionError(ValueError):
    """The predictions failed a check; nothing was written."""


def _check(probs: np.ndarray, n_rows: int) -> None:
    problems = []
    if len(probs) != n_rows:
        problems.append(f"{len(probs)} predictions for {n_rows} test rows")
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        problems.append(
            f"{int(bad.sum())} predictions are not finite values in [0, 1] (first at row {int(np.flatnonzero(bad)[0])})"
        )
    if problems:
        raise SubmissionError("submission check failed: " + "; ".join(problems))


def _output_paths(out_dir: str | Path, expid: str) -> tuple[Path, Path]:
    """``prediction.csv`` and ``<expid>.zip`` in ``out_dir``; refused before any scoring when
    they cannot be written there (a file where the folder should be, a folder at a file's path)."""
    out_dir = Path(out_dir)
    if expid in ("", ".", "..") or Path(expid).name != expid or "\\" in expid:
        raise SubmissionError(f"expid {expid!r} is not a plain name: {expid}.zip would leave --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise SubmissionError(f"--out {out_dir} is a file, not a folder")
    above = next((p for p in out_dir.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise SubmissionError(f"--out {out_dir}: {above} is a file, not a folder")
    paths = out_dir / "prediction.csv", out_dir / f"{expid}.zip"
    for path in paths:
        if path.is_dir():
            raise SubmissionError(f"cannot write {path}: a folder of that name is in the way")
    return paths


def write_submission(
    probs: np.ndarray,
    out_dir: str | Path,
    expid: str,
    column: str = "Task2",
    n_rows: int | None = None,
) -> tuple[Path, Path]:
    """Validate and write ``prediction.csv`` and ``<expid>.zip``.

    ``n_rows``: the test file's row count, which must equal the number of predictions. IDs are
    0..N-1 in the order of ``probs``. Both files go to temp files first; the zip is renamed into
    place, then the CSV: a failure before that leaves the previous pair untouched.
    """
    if column not in SUBMISSION_COLUMNS:
        raise SubmissionError(f"--column must be one of {list(SUBMISSION_COLUMNS)}, got {column!r}")
    probs = np.asarray(probs, dtype=np.float64)
    _check(probs, len(probs) if n_rows is None else n_rows)
    csv_path, zip_path = _output_paths(out_dir, expid)
    ids = np.arange(len(probs))
    buf = io.StringIO()
    buf.write(f"ID,{column}\n")
    np.savetxt(buf, np.column_stack([ids, probs]), fmt=["%d", "%.8f"], delimiter=",")
    text = buf.getvalue().encode("utf-8")
    with atomic_open(csv_path, "wb") as csv_fh:
        csv_fh.write(text)
        csv_fh.flush()  # a full disk fails here, before the zip replaces the old one
        os.fsync(csv_fh.fileno())
        with (
            atomic_open(zip_path, "wb") as fh,
            zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf,
        ):
            zf.writestr("prediction.csv", text)
    return csv_path, zip_path


def predict_submission(
    config_dir: str | Path | None,
    expid: str,
    *,
    gpu: int | None = -1,
    column: str = "Task2",
    out_dir: str | Path = "submission",
    test_data: str | Path | None = None,
    checkpoint: str | Path | None = None,
    batch_size: int | None = None,
    overrides: list[str] | None = None,
    allow_hash_mismatch: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Score the test file with the best checkpoint of ``expid`` and write the submission.

    The run folder comes from the config (``<model_root>/<dataset_id>/<expid>/model.pt``)
    unless ``checkpoint`` names the file. The model and how it reads a history (``max_len``)
    come from the checkpoint; the test file (``test_data``, unless ``test_data`` is given) and
    ``bf16`` from the config as loaded now, overrides included, when ``config_dir`` is given:
    so a moved data root or ``--override test_data=...`` is honoured. Returns a summary dict.
    """
    flush_denormals()  # before torch's thread pool starts (see runtime.py)
    if column not in SUBMISSION_COLUMNS:
        raise SubmissionError(f"--column must be one of {list(SUBMISSION_COLUMNS)}, got {column!r}")
    current, notices = _current_config(
        config_dir, expid, overrides, allow_hash_mismatch, fallback=checkpoint is not None
    )
    if checkpoint is None:
        checkpoint = _trained_model(current, config_dir, expid)
    _output_paths(out_dir, expid)  # a bad --out fails now, not after the scoring
    keep_freed_memory()  # as in training: big activation blocks are reused, not re-faulted
    device = resolve_device(gpu)
    threads_line = None
    if device.type == "cpu":  # --threads, else the config's num_threads, else the default
        num = threads or (current.trainer.num_threads if current is not None else None)
        threads_line = configure_threads(num)[1]
    model, cfg, ckpt = ckpt_io.load_model(checkpoint, device)
    ds = cfg.dataset
    named = (expid, current.dataset.dataset_id if current else ds.dataset_id)
    if named != (cfg.expid, ds.dataset_id):
        raise SubmissionError(
            f"{checkpoint} holds expid {cfg.expid!r} on dataset {ds.dataset_id!r}, but "
            f"--expid names {named[0]!r} on {named[1]!r}: give the checkpoint's own --expid "
            "(its test file and settings are read from there)"
        )
    run = current or cfg  # what to score and how: the config as loaded now, if any
    test_path = str(test_data or run.dataset.test_data or "")
    if not test_path:
        raise FileNotFoundError(
            "no test file: the config has no test_data and --test-data was not given"
        )
    t0 = time.perf_counter()
    n_items = int(ckpt["item_tables"]["n_items"])
    split = read_split(
        test_path, ds, n_items=n_items, max_len=cfg.trainer.max_len, require_label=False
    )
    if split.n_rows == 0:
        raise SubmissionError(f"test file {test_path} has no rows: nothing to submit")
    bf16 = use_bf16(run.trainer.bf16, device)
    probs = _score(model, cfg, split, device, batch_size, bf16=bf16, progress=progress)
    seconds = time.perf_counter() - t0
    csv_path, zip_path = write_submission(probs, out_dir, cfg.expid, column, n_rows=split.n_rows)
    summary: dict[str, Any] = {
        "threads": threads_line,
        "rows": int(split.n_rows),
        "mean_prediction": float(probs.mean()) if len(probs) else float("nan"),
        "csv": str(csv_path),
        "zip": str(zip_path),
        "checkpoint": str(checkpoint),
        "test_data": test_path,
        "seconds": seconds,
        "notices": notices,
    }
    if split.labels is not None and len(np.unique(split.labels)) == 2:
        summary["test_AUC"] = auc(split.labels, probs)
    return summary


def _current_config(
    config_dir: str | Path | None,
    expid: str,
    overrides: list[str] | None,
    allow_hash_mismatch: bool,
    *,
    fallback: bool,
) -> tuple[Any, list[str]]:
    """(the config as loaded now or None, notices). With ``fallback`` (a --checkpoint was
    given), a config folder that does not exist at all is a notice: the checkpoint's own
    config is used."""
    if config_dir is None:
        return None, []
    from mmctr.config import ConfigError, load_config

    try:
        current = load_config(
            config_dir, expid, overrides=overrides, allow_hash_mismatch=allow_hash_mismatch
        )
    except ConfigError:
        # Only a config folder that is not there at all falls back to the checkpoint's own
        # config: a typo in --expid, an --override or a hash mismatch must not be dropped.
        if not fallback or Path(config_dir).exists() or overrides:
            raise
        notice = (
            f"config folder {str(config_dir)!r} does not exist; scoring with the "
            "checkpoint's own config"
        )
        return None, [notice]
    return current, []


def _trained_model(current: Any, config_dir: str | Path | None, expid: str) -> Path:
    """The run folder's ``model.pt`` of the config as loaded now."""
    if current is None:
        raise SubmissionError("give a config folder, or the checkpoint to use")
    checkpoint = run_dir_of(current) / "model.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"no trained model for expid {expid!r}: {checkpoint} does not exist "
            f"(train it first: python run_expid.py --config {config_dir} --expid {expid})"
        )
    return checkpoint


def _score(model, cfg, split, device, batch_size: int | None, *, bf16: bool, progress: bool):
    """Click probabilities of the test split in file order, batches as the trainer evaluates."""
    loader = BatchLoader(
        split,
        batch_size or max(cfg.trainer.batch_size, 4096),
        device=device,
        min_seq_len=int(getattr(cfg.model, "first_k_cols", 1) or 1),
    )
    return predict_probs(model, loader, bf16=bf16, progress=progress, desc="scoring test")
