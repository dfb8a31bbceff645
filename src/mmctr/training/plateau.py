"""Early stopping and learning-rate decay on a plateau of the monitored metric (FuxiCTR's rule).

An evaluation improves when its monitor beats the best so far by more than 1e-9 in the
monitor's direction (``monitor_mode``). Any other evaluation is a bad one: the learning rate
decays by ``lr_decay_factor`` (with ``reduce_lr_on_plateau``, never below ``min_lr``), and
``early_stop_patience`` bad evaluations in a row stop training.

Example::

    plateau = Plateau(mode="max", patience=2, reduce_lr=True, decay=0.1, min_lr=1e-6)
    decision = plateau.step(state, value=0.71, metrics={"AUC": 0.71})  # state: TrainerState
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: an evaluation must beat the best by more than this to count as an improvement
MIN_IMPROVEMENT = 1e-9


@dataclass(frozen=True)
class Decision:
    """What one evaluation decided: ``improved`` (a new best), ``lr`` (the decayed learning
    rate, None when it stayed) and ``stop`` (this evaluation ends training)."""

    improved: bool
    lr: float | None = None
    stop: bool = False


@dataclass(frozen=True)
class Plateau:
    mode: str = "max"
    patience: int = 2
    reduce_lr: bool = True
    decay: float = 0.1
    min_lr: float = 1e-6

    @classmethod
    def from_config(cls, t: Any) -> Plateau:
        """From a TrainerConfig's ``monitor_mode``, ``early_stop_patience``,
        ``reduce_lr_on_plateau``, ``lr_decay_factor`` and ``min_lr``."""
        return cls(
            t.monitor_mode,
            t.early_stop_patience,
            t.reduce_lr_on_plateau,
            t.lr_decay_factor,
            t.min_lr,
        )

    def improves(self, best: float | None, value: float) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        return best is None or sign * (value - best) > MIN_IMPROVEMENT

    def step(self, state: Any, value: float, metrics: dict[str, Any]) -> Decision:
        """Record one evaluation in ``state`` (``best``, ``best_metrics``, ``bad_evals``,
        ``lr``, ``stopped``) and say what it decided."""
        if self.improves(state.best, value):
            state.best, state.best_metrics, state.bad_evals = value, metrics, 0
            return Decision(improved=True)
        state.bad_evals += 1
        lr = None
        if self.reduce_lr and state.lr > self.min_lr:
            state.lr = lr = max(state.lr * self.decay, self.min_lr)
        stop = state.bad_evals >= self.patience
        if stop:
            state.stopped = True
        return Decision(improved=False, lr=lr, stop=stop)

    def goes_on(self, state: Any) -> bool:
        """A resumed run that had stopped goes on when the patience is now larger than its
        bad evaluations (``state.stopped`` is cleared); True when that happened."""
        if state.stopped and state.bad_evals < self.patience:
            state.stopped = False
            return True
        return False
