"""TensorBoard event files of a run, in its run folder (``tensorboard --logdir checkpoints/``).

The trainer calls a :class:`RunTracker` at four points and nothing else:

    tracker.start(run_dir, enabled=..., first_step=..., ...)   # before the first batch
    tracker.train_step(step, epoch, loss_sum, rows, lr, grad_norm)  # when it has read the loss
    tracker.evaluation(step, record)                            # after each evaluation
    tracker.finish(results, hparams)                            # after the final metrics

What is written (x axis: the global optimizer step, so a resumed run continues its curves):

- ``train/loss``, ``train/lr``, ``train/grad_norm`` (when clipping computes it; no extra
  pass over the gradients), ``train/samples_per_s``: every :data:`SCALARS_EVERY` steps, the
  mean loss and the throughput since the previous point. The loss is the one the trainer
  already reads from its on-device guard (every step on the CPU, every CHECK_EVERY steps on
  an accelerator), so tracking adds no host wait to the step. Under torchrun: rank 0's share
  (samples/s counts every rank).
- ``valid/AUC``, ``valid/logloss``, ``valid/gAUC`` (and ``valid/cold_AUC`` / ``warm_AUC``,
  ``valid/monitor``) at every evaluation;
- at the end, the resolved hyper-parameters as TensorBoard hparams with the final metrics
  (``final/valid_AUC``, ..., ``final/test_AUC``) and ``baselines/<name>/<metric>`` when the
  results carry baselines.

A resumed run opens its writer with ``purge_step`` = its checkpoint's step + 1: points that a
killed run wrote after its last checkpoint are hidden by TensorBoard's reader, so every step
appears once. A fresh run in a folder with old event files purges from step 0 (the old
curves are hidden, the files kept). Only rank 0 writes; ``tensorboard: false`` turns it off,
and a missing ``tensorboard`` package turns it off with one warning.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

#: train scalars are written at the steps that are multiples of this
SCALARS_EVERY = 10

#: evaluation metrics written as ``valid/<name>`` when present
EVAL_KEYS = ("AUC", "logloss", "gAUC", "cold_AUC", "warm_AUC", "monitor")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def hparam_value(value: Any) -> int | float | str | bool:
    """A config value as TensorBoard's hparams accept it (lists and None as text)."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def hparams_of(cfg) -> dict[str, Any]:
    """The experiment's resolved hyper-parameters (trainer and model keys, without the
    run-environment ones and paths), as TensorBoard hparams."""
    import dataclasses

    from mmctr.config import RUN_ENVIRONMENT_KEYS

    out: dict[str, Any] = {"expid": cfg.expid, "dataset_id": cfg.dataset.dataset_id}
    for part in (cfg.trainer, cfg.model):
        for key, value in dataclasses.asdict(part).items():
            if key not in RUN_ENVIRONMENT_KEYS and key != "tensorboard":
                out[key] = hparam_value(value)
    return out


class RunTracker:
    """TensorBoard scalars of one run; every method is a no-op until :meth:`start` enables it."""

    def __init__(self) -> None:
        self.writer = None
        self.last_step = 0
        self._epoch = -1
        self._read = (0.0, 0)  # the running (loss sum, rows) of the epoch at the last read
        self._acc = [0.0, 0, 0.0]  # loss sum, rows, seconds since the last written point
        self._t_ref = time.perf_counter()
        self._world_size = 1

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def start(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        first_step: int = 0,
        resumed: bool = False,
        epoch: int = 0,
        running: tuple[float, int] | None = None,
        world_size: int = 1,
        log: Any = None,
    ) -> None:
        """Open the writer (when ``enabled``). ``running``: the epoch's (loss sum, rows) a
        mid-epoch resume restored, so the first point counts only the new steps."""
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            if log is not None:
                log.warning("tensorboard is not installed (%s): no event files", exc)
            return
        purge = first_step + 1 if resumed else 0
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge, flush_secs=10)
        self.last_step = first_step
        self._epoch = epoch
        self._read = (float(running[0]), int(running[1])) if running else (0.0, 0)
        self._world_size = world_size
        self._t_ref = time.perf_counter()
        if log is not None:
            log.info("tensorboard: event files in %s (tensorboard --logdir %s)", run_dir, run_dir)

    def train_step(
        self,
        step: int,
        epoch: int,
        loss_sum: float,
        rows: int,
        lr: float,
        grad_norm: float | None = None,
    ) -> None:
        """The trainer has read the epoch's running (loss sum, rows) at ``step``."""
        if self.writer is None:
            return
        now = time.perf_counter()
        if epoch != self._epoch:  # the running loss restarted with the epoch
            self._epoch, self._read = epoch, (0.0, 0)
        acc = self._acc
        acc[0] += loss_sum - self._read[0]
        acc[1] += rows - self._read[1]
        acc[2] += now - self._t_ref
        self._read, self._t_ref = (loss_sum, rows), now
        if step % SCALARS_EVERY or step <= self.last_step or acc[1] <= 0:
            return
        w = self.writer
        w.add_scalar("train/loss", acc[0] / acc[1], step)
        w.add_scalar("train/lr", lr, step)
        if grad_norm is not None and math.isfinite(grad_norm):
            w.add_scalar("train/grad_norm", grad_norm, step)
        if acc[2] > 0:
            w.add_scalar("train/samples_per_s", acc[1] * self._world_size / acc[2], step)
        self.last_step = step
        self._acc = [0.0, 0, 0.0]

    def evaluation(self, step: int, record: dict[str, Any]) -> None:
        """One evaluation's metrics (the trainer's history record) at ``step``."""
        if self.writer is None:
            return
        for key in EVAL_KEYS:
            if _finite(record.get(key)):
                self.writer.add_scalar(f"valid/{key}", record[key], step)
        if _finite(record.get("epoch")):
            self.writer.add_scalar("valid/epoch", record["epoch"], step)
        self.writer.flush()
        self._t_ref = time.perf_counter()  # the evaluation is no training time

    def finish(self, results: dict[str, Any], hparams: dict[str, Any]) -> None:
        """Final metrics (best weights), baselines if any, and the hparams of the run."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        step = max(self.last_step, *(h.get("step", 0) for h in results.get("history", [{}])))
        final: dict[str, float] = {}
        for split in ("valid", "test"):
            for key, value in (results.get(split) or {}).items():
                if key in EVAL_KEYS and _finite(value):
                    final[f"final/{split}_{key}"] = float(value)
        baselines = results.get("baselines")
        if isinstance(baselines, dict):
            for name, metrics in baselines.items():
                for key, value in (metrics or {}).items() if isinstance(metrics, dict) else ():
                    if _finite(value):
                        self.writer.add_scalar(f"baselines/{name}/{key}", value, step)
        hp = {k: hparam_value(v) for k, v in hparams.items()}
        for summary in hparams_summary(hp, final):
            self.writer._get_file_writer().add_summary(summary)
        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
