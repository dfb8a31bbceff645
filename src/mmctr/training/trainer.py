"""The training recipe: ``train(cfg) -> metrics``, readable top to bottom.

:class:`Trainer`: ``setup`` (run folder, data, model, optimizer, a resumed state)  ->
``train_epoch`` for each epoch (shuffled batches, accumulated steps; ``evaluate`` every epoch
or every ``eval_steps``, best/last checkpoints)  ->  ``finish`` (reload the best weights,
final valid and test metrics, curves). Learning-rate decay on plateau and early stopping are
one small object (:class:`mmctr.training.plateau.Plateau`).

Run folder ``<model_root>/<dataset_id>/<expid>/``: model.pt (best), last.pt (resume),
train.log (appended), config.yaml (resolved), metrics.json, curves.png. Under torchrun only
rank 0 writes files.

Loss: binary cross-entropy on logits, averaged over the samples of an optimizer step (also
for the last, partial accumulation window of an epoch, which always steps), plus the
embedding/net L2 regularisers.

Next door: the step itself (``step.py``), the on-device NaN guard and running loss
(``guard.py``), the CUDA-graph step (``graphs.py``), torchrun plumbing (``distributed.py``),
checkpoints (``checkpoint.py``), metrics (``metrics.py``), scoring a split and the bf16 choice
(``scoring.py``, shared with prediction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from mmctr.atomic import atomic_write_text
from mmctr.config import RUN_ENVIRONMENT_KEYS, ConfigError, ExperimentConfig, canonical_json
from mmctr.data.batching import BatchLoader, batch_sizes
from mmctr.data.contract import DataContractError
from mmctr.data.dataset import TARGET_COL, SplitData, read_item_table, read_split
from mmctr.device import resolve_device
from mmctr.log import get_logger
from mmctr.models import build_model
from mmctr.progress import Progress
from mmctr.runtime import flush_denormals, keep_freed_memory, seed_everything
from mmctr.threads import configure_threads
from mmctr.training import checkpoint as ckpt_io
from mmctr.training.baselines import fit_baselines, report_baselines
from mmctr.training.distributed import DistContext, init_distributed, shutdown_distributed
from mmctr.training.graphs import GraphedStep, configure_for_graphs
from mmctr.training.guard import DivergenceGuard
from mmctr.training.metrics import monitor_value
from mmctr.training.plateau import Plateau
from mmctr.training.scoring import (  # noqa: F401 (predict_probs: the old import path)
    evaluate_split,
    predict_probs,
    run_dir_of,
    use_bf16,
)
from mmctr.training.step import TrainStep
from mmctr.training.tracking import RunTracker, hparams_of


class MonitorNotFinite(ValueError):
    """The monitored valid metric is NaN/inf (e.g. AUC on one class): nothing can be compared."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoints were kept."""


#: on an accelerator, the host reads the running loss (and the NaN flag) every this many steps
CHECK_EVERY = 50


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    lr: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    # a last.pt taken mid-epoch (after an eval_steps evaluation): batches of the epoch done,
    # and every rank's running [loss sum, samples] of the epoch so far
    batches_done: int = 0
    running: list[list[float]] = field(default_factory=list)


def cuda_graphs_off_reason(t, device: torch.device, dist: DistContext) -> str | None:
    """Why ``cuda_graphs: true`` cannot apply to this run, or None when it can."""
    if device.type != "cuda":
        return f"needs a CUDA device, this run is on {device}"
    if dist.enabled:
        return "not under torchrun (one process only)"
    if t.accumulation_steps != 1:
        return f"needs accumulation_steps: 1, got {t.accumulation_steps}"
    if t.optimizer.lower() not in ("adam", "adamw", "sgd"):
        return f"needs a fused optimizer (adam, adamw, sgd), got {t.optimizer!r}"
    return None


#: keys a resumed run may change: where and how it runs, where the data files are, how it
#: evaluates, and how long it may go on
RESUME_MAY_CHANGE = RUN_ENVIRONMENT_KEYS | {
    "epochs",
    "early_stop_patience",
    "eval_batch_size",
    "data_root",
    "train_data",
    "valid_data",
    "test_data",
    "item_info",
}


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """Every key of a saved config, defaults filled in (a key written out with its default
    value is no change); the dict as it is when it no longer loads."""
    try:
        cfg = ExperimentConfig.from_dict(config)
    except ConfigError:
        return dict(config)
    out: dict[str, Any] = {}
    for part in (cfg.dataset, cfg.trainer, cfg.model):
        out.update(dataclasses.asdict(part))
    return out


def _check_resumed_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``path`` with an experiment other than the one it was trained as
    (numbers compare by value: 1 == 1.0). A checkpoint without a recorded config passes."""
    if not saved:
        return
    skip = RESUME_MAY_CHANGE | {"expid", "_meta"}
    a = {k: v for k, v in _resolved(saved).items() if k not in skip}
    b = {k: v for k, v in _resolved(current).items() if k not in skip}
    changed = [
        f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
        for k in sorted(set(a) | set(b))
        if canonical_json({k: a[k]} if k in a else {})
        != canonical_json({k: b[k]} if k in b else {})
    ]
    if changed:
        may = ", ".join(sorted(RESUME_MAY_CHANGE - RUN_ENVIRONMENT_KEYS))
        raise ConfigError(
            f"--resume: {path} was trained with another config ({'; '.join(changed)}). Resume "
            f"with the same config and overrides (only {may} and run-environment keys may "
            "change), or train anew without --resume"
        )


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    table = {
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
        "rmsprop": torch.optim.RMSprop,
    }
    key = name.lower()
    if key not in table:
        raise ValueError(f"optimizer {name!r} is not supported; choose one of {sorted(table)}")
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if key in ("adam", "adamw", "sgd"):
        kwargs["fused"] = True  # one fused kernel per step instead of per-parameter loops
    return table[key](params, **kwargs)


def _window_sizes(
    n_rows: int, global_batch: int, accumulation: int, world_size: int = 1
) -> list[int]:
    """Samples in each accumulation window of an epoch (the last window may be partial)."""
    sizes = batch_sizes(n_rows, global_batch, world_size)
    return [sum(sizes[i : i + accumulation]) for i in range(0, len(sizes), accumulation)]


def plot_curves(history: list[dict[str, Any]], path: Path) -> bool:
    """``curves.png``: train loss, valid AUC and logloss per evaluation. False (nothing
    written) without matplotlib: a finished run must not fail on its plot."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmctr.atomic import atomic_open

    x = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(
        axes, ["train_loss", "AUC", "logloss"], ["train loss", "valid AUC", "valid logloss"]
    ):
        ax.plot(x, [h.get(key, float("nan")) for h in history], marker="o")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return True


def train(cfg, gpu: int | None = -1, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` (an ExperimentConfig) and return ``{"valid": ..., "test": ..., "run_dir": ...}``."""
    flush_denormals()  # before torch's thread pool starts (see runtime.py)
    dist = init_distributed(use_cuda=gpu is not None and int(gpu) >= 0)
    made = _first_missing(run_dir_of(cfg))
    tracker = RunTracker()  # TensorBoard (training/tracking.py); finished here, after _train
    try:
        results = _train(cfg, gpu, resume, progress, dist, tracker)
        tracker.finish(results, hparams_of(cfg))
        return results
    except Exception:
        if made is not None and dist.is_main:
            tracker.close()
            _remove_failed_start(run_dir_of(cfg), made)
        raise
    finally:
        tracker.close()
        shutdown_distributed()


def _first_missing(path: Path) -> Path | None:
    """The top-most folder of ``path`` that does not exist yet (None: ``path`` exists)."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _remove_failed_start(run_dir: Path, top: Path) -> None:
    """A new run that failed before writing anything but its log (bad data, a config the
    model refuses) leaves no run folder behind: the error went to stderr. Only empty folders
    up to ``top`` (made by this run) are removed; another run's files are never touched."""
    if not run_dir.is_dir() or any(p.name != "train.log" for p in run_dir.iterdir()):
        return
    get_logger("mmctr.train")  # closes its handler on train.log
    with contextlib.suppress(OSError):
        (run_dir / "train.log").unlink(missing_ok=True)
        for folder in [run_dir, *run_dir.parents]:
            folder.rmdir()  # fails (and stops) at the first folder that is not empty
            if folder == top:
                break


def _train(
    cfg, gpu, resume: bool, progress: bool, dist: DistContext, tracker: RunTracker | None = None
) -> dict[str, Any]:
    return Trainer(cfg, gpu, resume, progress, dist, tracker or RunTracker()).run()


class Trainer:
    """One training run, the recipe: :meth:`setup` (run folder, data, model, optimizer, a
    resumed state), then :meth:`train_epoch` until the epochs are done or :class:`Plateau`
    stops it (each epoch, or every ``eval_steps``, :meth:`evaluate` and the checkpoints), then
    :meth:`finish` (the best weights scored on valid and test, metrics.json, curves.png).

    DDP and CUDA graphs stay at two seams: ``net_model`` (the DDP wrapper, or the model) and
    ``graphed`` (the replayed step, or None); the loop itself does not branch on them except
    for DDP's ``no_sync`` in an accumulation window.
    """

    def __init__(self, cfg, gpu, resume: bool, progress: bool, dist, tracker) -> None:
        self.cfg, self.t, self.ds = cfg, cfg.trainer, cfg.dataset
        self.gpu, self.resuming, self.progress = gpu, resume, progress
        self.dist, self.tracker, self.main = dist, tracker, dist.is_main
        self.plateau = Plateau.from_config(cfg.trainer)

    def run(self) -> dict[str, Any]:
        self.setup()
        self.setup_data()
        self.setup_model()
        self.setup_step()
        self.fit()
        return self.finish()

    # ---- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        """Device, run folder, log, threads; the checkpoint to resume (checked before anything
        in the run folder is rewritten; applied by :meth:`setup_model`); the seeds."""
        cfg, t, dist = self.cfg, self.t, self.dist
        if dist.enabled and self.gpu is not None and int(self.gpu) >= 0:
            self.device = resolve_device(dist.local_rank)
        else:
            self.device = resolve_device(self.gpu)
        self.run_dir = run_dir_of(cfg)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        log = get_logger("mmctr.train", self.run_dir / "train.log" if self.main else None)
        if not self.main:
            log.disabled = True
        self.log = log
        self.bf16 = use_bf16(t.bf16, self.device)
        log.info("=" * 70)
        log.info(
            "expid %s | model %s | device %s | bf16 %s | world size %d | run dir %s",
            cfg.expid,
            cfg.model.model,
            self.device,
            self.bf16,
            dist.world_size,
            self.run_dir,
        )
        for note in getattr(cfg, "notices", []):
            log.info("notice: %s", note)
        log.info("memory: %s", keep_freed_memory())
        if self.device.type == "cpu":
            configure_threads(t.num_threads, log)  # logged; warns on a busy machine
        self.cfg_dict = cfg.to_dict()
        self.last_path, self.best_path = self.run_dir / "last.pt", self.run_dir / "model.pt"
        saved = None
        if self.resuming:
            if not self.last_path.is_file():
                raise FileNotFoundError(f"--resume: no {self.last_path} to resume from")
            saved = ckpt_io.load_checkpoint(self.last_path)
            _check_resumed_config(saved.get("config") or {}, self.cfg_dict, self.last_path)
        self._saved = saved
        seed_everything(t.seed + dist.rank)

    def setup_data(self) -> None:
        """The item table, the train and valid splits, the training loader."""
        cfg, t, ds = self.cfg, self.t, self.ds
        t0 = time.perf_counter()
        self.items = items = read_item_table(ds.item_info, ds)
        self.read = dict(n_items=items.n_items, max_len=t.max_len, group_col=cfg.group_col)
        self.train_split = read_split(ds.train_data, ds, **self.read)
        self.valid_split = read_split(ds.valid_data, ds, **self.read)
        for path, split in ((ds.train_data, self.train_split), (ds.valid_data, self.valid_split)):
            if split.n_rows == 0:
                raise DataContractError(f"{path}: the file has no rows (expected at least one)")
        self.log.info(
            "data: %d items, %d train rows, %d valid rows, history width %d (%.1fs)",
            items.n_items,
            self.train_split.n_rows,
            self.valid_split.n_rows,
            self.train_split.seq_width,
            time.perf_counter() - t0,
        )
        self.train_items = np.unique(self.train_split.columns[TARGET_COL])
        self.min_seq_len = int(getattr(cfg.model, "first_k_cols", 1) or 1)
        self.graphs = self._graphs_on()
        self.loader = BatchLoader(
            self.train_split,
            t.batch_size,
            shuffle=t.shuffle,
            seed=t.seed,
            device=self.device,
            min_seq_len=self.min_seq_len,
            trim_padding=t.trim_padding and not self.graphs,
            bucket_by_length=t.bucket_by_length,
            on_device=t.data_on_device,
            pin_memory=t.pin_memory,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.eval_bs = t.eval_batch_size or max(t.batch_size, 4096)

    def _graphs_on(self) -> bool:
        if not self.t.cuda_graphs:
            return False
        off = cuda_graphs_off_reason(self.t, self.device, self.dist)
        self.log.info(
            "cuda_graphs: %s",
            f"on (static batch shapes: histories at the full width {self.train_split.seq_width})"
            if off is None
            else f"off, {off}",
        )
        return off is None

    def setup_model(self) -> None:
        """The model (DDP-wrapped under torchrun), the optimizer, the trainer state: fresh, or
        the resumed checkpoint's (whose copy is then freed)."""
        t, dist, device = self.t, self.dist, self.device
        saved, self._saved = self._saved, None
        self.model = model = build_model(self.cfg.model, self.ds, self.items).to(device)
        if self.main:  # only now: a config the data or the model refuses leaves the run alone
            text = yaml.safe_dump(self.cfg_dict, sort_keys=False)
            atomic_write_text(self.run_dir / "config.yaml", text)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.log.info("model: %s trainable parameters", f"{n_params:,}")
        self.net_model: nn.Module = model
        if dist.enabled:
            self.net_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = make_optimizer(
            t.optimizer, model.parameters(), t.learning_rate, t.weight_decay
        )
        self.state = TrainerState(lr=t.learning_rate)
        self.items_shapes = ckpt_io.item_table_shapes(self.items)
        if saved is not None:
            self.resume(saved)
            del saved  # the loaded states are in place; free the copy
        self._set_lr(self.state.lr)
        configure_for_graphs(model, self.optimizer, self.graphs)  # after a resume's optimizer

    def resume(self, saved: dict[str, Any]) -> None:
        """Model, optimizer, trainer state and this rank's random streams from ``last.pt``."""
        dist, log = self.dist, self.log
        self.model.load_state_dict(saved["model_state"])
        self.optimizer.load_state_dict(saved["optimizer_state"])
        self.state = state = TrainerState(**saved["trainer_state"])
        per_rank = saved.get("rng_per_rank") or [saved["rng"]]
        if len(per_rank) != dist.world_size:
            log.warning(
                "resuming on %d process(es) from a checkpoint of %d: the random streams "
                "(dropout, shuffling) continue differently than they would have",
                dist.world_size,
                len(per_rank),
            )
        ckpt_io.set_rng_states(per_rank[dist.rank % len(per_rank)])
        if state.batches_done and len(state.running) != dist.world_size:
            raise ConfigError(
                f"--resume: {self.last_path} was taken mid-epoch by {len(state.running)} "
                f"process(es); resume it with as many (here {dist.world_size}), as batches are "
                "cut from the global batch size"
            )
        if self.plateau.goes_on(state):  # a larger early_stop_patience lets a stopped run go on
            log.info("early_stop_patience is now %d: training goes on", self.t.early_stop_patience)
        log.info(
            "resumed from %s: epoch %d, step %d, best %s",
            self.last_path,
            state.epoch,
            state.step,
            state.best,
        )

    def setup_step(self) -> None:
        """The accumulation windows, the NaN guard and the training step (eager or graphed)."""
        t, dist, device = self.t, self.dist, self.device
        global_batch = t.batch_size * dist.world_size
        self.windows = _window_sizes(
            self.train_split.n_rows, global_batch, t.accumulation_steps, dist.world_size
        )
        self.n_batches = len(self.loader)
        # The running loss and the NaN guard stay on the device (see training/guard.py); the
        # host reads them every step on the CPU (free there) and every CHECK_EVERY elsewhere.
        self.guard = DivergenceGuard(
            self.optimizer, device, distributed=dist.enabled, first_step=self.state.step
        )
        self.check_every = 1 if device.type == "cpu" else CHECK_EVERY
        self.step = TrainStep(
            self.model,
            self.optimizer,
            self.guard,
            device,
            bf16=self.bf16,
            max_gradient_norm=t.max_gradient_norm,
            embedding_regularizer=t.embedding_regularizer,
            net_regularizer=t.net_regularizer,
            net_model=self.net_model,
            autocast_cache=not self.graphs,
        )
        self.graphed = None
        if self.graphs:
            self.graphed = GraphedStep(
                self.step.whole, self.optimizer, device, log=self.log, full_rows=t.batch_size
            )

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ---- evaluation and checkpoints ------------------------------------------------------
    def score(self, split: SplitData) -> dict[str, Any]:
        return evaluate_split(
            self.model,
            split,
            self.dist,
            batch_size=self.eval_bs,
            device=self.device,
            min_seq_len=self.min_seq_len,
            bf16=self.bf16,
            cold_items=self.train_items,
        )

    def evaluate(self, train_loss: float, epoch_float: float) -> None:
        """Score valid, log and record the evaluation, keep the best weights, and let the
        plateau decide on the learning rate and early stopping."""
        t, state, log = self.t, self.state, self.log
        metrics = self.score(self.valid_split)
        value = monitor_value(metrics, t.monitor)
        self._check_monitor(value)
        record = {
            "step": state.step,
            "epoch": round(epoch_float, 4),
            "train_loss": train_loss,
            "lr": state.lr,
            **metrics,
            "monitor": value,
        }
        state.history.append(record)
        decision = self.plateau.step(state, value, metrics)
        log.info(
            "eval @ epoch %.2f step %d: train_loss %.5f | valid AUC %.5f logloss %.5f gAUC %s | monitor %.5f%s",
            epoch_float,
            state.step,
            train_loss,
            metrics["AUC"],
            metrics["logloss"],
            f"{metrics.get('gAUC', float('nan')):.5f}",
            value,
            " (best)" if decision.improved else "",
        )
        info = {"epoch": epoch_float, "step": state.step, "valid": metrics}
        if decision.improved:
            self.save_checkpoint(self.best_path, info)
        if decision.lr is not None:
            self._set_lr(decision.lr)
            log.info("no improvement: learning rate -> %.2e", decision.lr)
        if decision.stop:
            log.info(
                "early stopping: stopped %s epoch %s of %d: %d evaluation(s) without "
                "improvement (early_stop_patience %d)",
                "after" if float(epoch_float).is_integer() else "at",
                f"{epoch_float:g}",
                t.epochs,
                state.bad_evals,
                t.early_stop_patience,
            )
        if not t.save_best_only:
            self.save_checkpoint(self.run_dir / f"model_step{state.step}.pt", info)
        self.tracker.evaluation(state.step, record)
        self.net_model.train()

    def _check_monitor(self, value: float) -> None:
        if math.isfinite(value):
            return
        labels = np.unique(self.valid_split.labels).tolist()
        msg = (
            f"the monitor ({self.t.monitor}) is {value} on the valid split {self.ds.valid_data} "
            f"at step {self.state.step}, so no evaluation can be compared with another"
            + (
                f": its labels hold only {labels} (AUC needs both classes)"
                if len(labels) < 2
                else ""
            )
        )
        self.log.error(msg)
        raise MonitorNotFinite(msg)

    def save_checkpoint(self, path: Path, info: dict[str, Any]) -> None:
        """Weights + resolved config + item-table shapes (``model.pt``); rank 0 only."""
        if self.main:
            ckpt_io.save_best(path, self.model, self.cfg_dict, self.items_shapes, info)

    def save_last(self, batches_done: int, loss_sum: float = 0.0, seen: int = 0) -> None:
        """last.pt, with every rank's random streams and running epoch loss (so that each
        rank resumes its own); ``batches_done`` > 0 mid-epoch."""
        dist, state = self.dist, self.state
        mine = (ckpt_io.rng_states(), [loss_sum, seen])
        ranks = dist.all_gather_object(mine) if dist.enabled else [mine]
        state.batches_done = batches_done
        state.running = [r[1] for r in ranks] if batches_done else []
        if self.main:
            rng = [r[0] for r in ranks] if dist.enabled else None
            ckpt_io.save_last(
                self.last_path, self.model, self.optimizer, state.__dict__, self.cfg_dict, rng
            )

    def checked_loss(self, epoch: int, batch_no: int) -> tuple[float, int]:
        """(summed train loss, samples) of this epoch so far; stops a diverged run."""
        loss_sum, rows, first_bad = self.guard.read()
        if first_bad is None:
            return loss_sum, rows
        what = (
            f"loss became {loss_sum}"
            if not math.isfinite(loss_sum)
            else "gradient norm became non-finite"
        )
        msg = (
            f"{what} at optimizer step {first_bad + 1} (epoch {epoch + 1}); that update was "
            f"skipped, so no weights hold it, and training stops at batch {batch_no}. The last "
            f"good checkpoints are kept in {self.run_dir} (model.pt = best, last.pt = the last "
            "epoch end or eval_steps evaluation). Try a lower learning_rate or bf16: false."
        )
        self.log.error(msg)
        raise TrainingDiverged(msg)

    # ---- the loop ------------------------------------------------------------------------
    def fit(self) -> None:
        state, dist = self.state, self.dist
        self.t_train = time.perf_counter()
        self.epoch_times: list[dict[str, float]] = []
        running = state.running[0] if state.batches_done else None  # rank 0's, mid-epoch
        self.tracker.start(
            self.run_dir,
            enabled=self.t.tensorboard and self.main,
            first_step=state.step,
            log=self.log,
            resumed=self.resuming,
            epoch=state.epoch,
            running=running,
            world_size=dist.world_size,
        )
        while state.epoch < self.t.epochs and not state.stopped:
            self.train_epoch()

    def train_epoch(self) -> None:
        """One epoch (or its rest, resumed mid-epoch), ending with an evaluation and last.pt."""
        t, state, dist, log = self.t, self.state, self.dist, self.log
        epoch = state.epoch
        t_epoch = time.perf_counter()
        self.loader.set_epoch(epoch)
        self.net_model.train()
        self.guard.reset_loss()
        start, state.batches_done = state.batches_done, 0  # > 0: resumed mid-epoch
        if start:
            running = state.running[dist.rank % len(state.running)]
            self.guard.restore(running[0], int(running[1]))
            log.info("resuming epoch %d at batch %d of %d", epoch + 1, start + 1, self.n_batches)
        self._batches(epoch, start)
        loss_sum, seen = self.checked_loss(epoch, self.n_batches)
        self.tracker.train_step(state.step, epoch, loss_sum, seen, state.lr, self.guard.grad_norm)
        loop_seconds = time.perf_counter() - t_epoch
        state.epoch = epoch + 1
        total_seen = int(dist.all_reduce_sum(seen))
        train_loss = dist.all_reduce_sum(loss_sum) / max(total_seen, 1)
        # Each epoch ends with an evaluation; with eval_steps, the last epoch does too unless
        # its last step was just evaluated (so the run always ends evaluated, with a model.pt).
        evaluated = bool(state.history) and state.history[-1]["step"] == state.step
        if not state.stopped and (not t.eval_steps or (state.epoch >= t.epochs and not evaluated)):
            self.evaluate(train_loss, float(state.epoch))
        log.info(
            "epoch %d done: %d samples, train_loss %.5f, %.1fs since start%s",
            state.epoch,
            total_seen,
            train_loss,
            time.perf_counter() - self.t_train,
            f" ({self.graphed.summary()})" if self.graphed is not None else "",
        )
        seconds = time.perf_counter() - t_epoch
        self.epoch_times.append(
            {"epoch": state.epoch, "loop_seconds": loop_seconds, "seconds": seconds}
        )
        self.save_last(0)
        dist.barrier()

    def _batches(self, epoch: int, start: int) -> None:
        """The epoch's batches from ``start``: accumulated steps, and with ``eval_steps`` an
        evaluation (and a mid-epoch last.pt) every that many optimizer steps."""
        t, state, n_batches = self.t, self.state, self.n_batches
        bar = Progress(
            n_batches,
            f"epoch {epoch + 1}/{t.epochs}",
            unit="batch",
            rate_unit="samples",
            initial=start,
            enabled=self.progress and self.main,
        )
        for i, batch in enumerate(self.loader.batches(start), start=start):
            closes_window = (i + 1) % t.accumulation_steps == 0 or i + 1 == n_batches
            rows = self._train_batch(i, batch, closes_window)
            self.guard.count(rows)
            bar.update(1, rows=rows * self.dist.world_size)
            if not closes_window:
                continue
            state.step += 1
            evaluating = bool(t.eval_steps) and state.step % t.eval_steps == 0
            if evaluating or state.step % self.check_every == 0:
                loss_sum, seen = self.checked_loss(epoch, i + 1)
                self.tracker.train_step(
                    state.step, epoch, loss_sum, seen, state.lr, self.guard.grad_norm
                )
                if self.progress and self.main:
                    bar.set_postfix(loss=loss_sum / max(seen, 1))
            if evaluating:
                total = self.dist.all_reduce_sum(loss_sum) / max(self.dist.all_reduce_sum(seen), 1)
                self.evaluate(total, epoch + (i + 1) / n_batches)
                if state.stopped:
                    break
                if i + 1 < n_batches:  # a kill from here on loses only steps since this one
                    self.save_last(i + 1, loss_sum, seen)
        bar.close()

    def _train_batch(self, i: int, batch: dict[str, Any], closes_window: bool) -> int:
        """Forward and backward of batch ``i`` (and the optimizer step when it closes its
        accumulation window); its rows on this rank."""
        dist = self.dist
        rows = int(batch["label"].shape[0])
        if self.graphed is not None:
            self.graphed(batch)  # a replayed CUDA graph for full batches, else eager
            return rows
        sync = contextlib.nullcontext()
        if dist.enabled and not closes_window:
            sync = self.net_model.no_sync()
        with sync:
            # Under torchrun with fewer training rows than ranks, a rank's share of the batch
            # is empty (batch_sizes folds any other small rest). DDP still needs every rank in
            # the gradient all-reduce: run one row through the model with weight 0 (it adds
            # nothing to loss or gradients).
            weight = 1.0
            if rows == 0:
                batch, weight = self.loader.gather(torch.zeros(1, dtype=torch.long)), 0.0
            # Mean over the samples of this optimizer step, on every rank: DDP averages
            # gradients over ranks, so scale by world size for the global mean.
            window = i // self.t.accumulation_steps
            self.step.forward_backward(batch, weight, dist.world_size / self.windows[window])
        if closes_window:
            self.step.optimizer_step()
        return rows

    # ---- the end -------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """The best weights scored on valid (and test); metrics.json and curves.png."""
        ds, t, log = self.ds, self.t, self.log
        self.dist.barrier()
        best = ckpt_io.load_checkpoint(self.best_path)
        self.model.load_state_dict(best["model_state"])
        results: dict[str, Any] = {"valid": self.score(self.valid_split)}
        labelled = {"valid": self.valid_split}
        if ds.test_data and Path(ds.test_data).is_file():
            test_split = read_split(ds.test_data, ds, require_label=False, **self.read)
            if test_split.labels is not None:
                results["test"] = self.score(test_split)
                labelled["test"] = test_split
        if t.baselines and self.main:
            fitted = fit_baselines(self.train_split, labelled, ds, self.items, seed=t.seed)
            results["baselines"] = report_baselines(fitted, results["valid"], log)
        results["history"] = [h for h in self.state.history if "AUC" in h]
        results["best_step"] = best.get("step")
        results["epochs"] = self.state.epoch
        # Per epoch run here (not a resumed run's earlier ones): ``loop_seconds`` the training
        # batches (and any eval_steps evaluations), ``seconds`` that plus the epoch-end
        # evaluation and best checkpoint. ``train_seconds``: everything since the first batch,
        # the final scoring of valid and test with the best weights included.
        results["epoch_seconds"] = self.epoch_times
        results["train_seconds"] = time.perf_counter() - self.t_train
        if self.main:
            text = json.dumps(_jsonable(results), indent=2)
            atomic_write_text(self.run_dir / "metrics.json", text)
            if not plot_curves(results["history"], self.run_dir / "curves.png"):
                log.warning(
                    "matplotlib is not installed: no curves.png (metrics.json has the history)"
                )
        log.info("best valid: %s", _fmt(results["valid"]))
        if "test" in results:
            log.info("test: %s", _fmt(results["test"]))
        results["run_dir"] = str(self.run_dir)
        return results


def _fmt(m: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
