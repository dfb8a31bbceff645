"""Early stopping + learning-rate decay on a plateau (training/plateau.py), on its own."""

from __future__ import annotations

import pytest

from mmctr.config.schema import TrainerConfig
from mmctr.training.plateau import Decision, Plateau
from mmctr.training.trainer import TrainerState


def _run(plateau: Plateau, values: list[float], lr: float = 1e-3):
    state = TrainerState(lr=lr)
    decisions = [plateau.step(state, v, {"AUC": v}) for v in values]
    return state, decisions


def test_improvements_reset_the_patience_and_keep_the_best():
    state, decisions = _run(Plateau(patience=2), [0.70, 0.69, 0.71, 0.705])
    assert [d.improved for d in decisions] == [True, False, True, False]
    assert state.best == 0.71 and state.best_metrics == {"AUC": 0.71}
    assert state.bad_evals == 1 and not state.stopped


def test_patience_bad_evaluations_in_a_row_stop_and_each_decays_the_lr():
    state, decisions = _run(Plateau(patience=2, decay=0.1, min_lr=1e-6), [0.7, 0.7, 0.6])
    assert decisions[0] == Decision(improved=True)
    assert decisions[1].lr == pytest.approx(1e-4) and not decisions[1].stop
    assert decisions[2].lr == pytest.approx(1e-5) and decisions[2].stop
    assert state.stopped and state.bad_evals == 2 and state.lr == pytest.approx(1e-5)


def test_the_lr_never_goes_below_min_lr_and_stays_when_reduce_lr_is_off():
    state, decisions = _run(Plateau(patience=9, decay=0.1, min_lr=5e-4), [0.7, 0.6, 0.6])
    assert decisions[1].lr == 5e-4 and decisions[2].lr is None and state.lr == 5e-4
    state, decisions = _run(Plateau(patience=9, reduce_lr=False), [0.7, 0.6])
    assert decisions[1].lr is None and state.lr == 1e-3


def test_min_mode_and_the_improvement_threshold():
    p = Plateau(mode="min")
    assert p.improves(None, 5.0) and p.improves(0.5, 0.4) and not p.improves(0.4, 0.5)
    assert not Plateau().improves(0.7, 0.7 + 1e-10)  # within 1e-9: no improvement
    assert Plateau().improves(0.7, 0.7 + 1e-8)


def test_a_larger_patience_lets_a_stopped_run_go_on():
    state, _ = _run(Plateau(patience=1), [0.7, 0.6])
    assert state.stopped
    assert not Plateau(patience=1).goes_on(state) and state.stopped
    assert Plateau(patience=3).goes_on(state) and not state.stopped


def test_from_config_reads_the_trainer_keys():
    t = TrainerConfig(
        monitor_mode="min",
        early_stop_patience=4,
        reduce_lr_on_plateau=False,
        lr_decay_factor=0.5,
        min_lr=1e-5,
    )
    assert Plateau.from_config(t) == Plateau("min", 4, False, 0.5, 1e-5)
