"""TensorBoard event files of a run: the scalars at the right steps, resume continuity, off."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mmctr.config import load_config  # noqa: E402
from mmctr.training import checkpoint as ckpt_io  # noqa: E402
from mmctr.training import tracking  # noqa: E402
from mmctr.training.trainer import train  # noqa: E402

from .helpers import write_experiment  # noqa: E402


def _scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _steps(scalars, tag) -> list[int]:
    return [s for s, _ in scalars[tag]]


@pytest.fixture
def every_2(monkeypatch):
    monkeypatch.setattr(tracking, "SCALARS_EVERY", 2)


def test_event_file_has_train_and_valid_scalars_at_the_right_steps(tmp_path, tiny_data, every_2):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=2)
    results = train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    run = tmp_path / "ckpt" / "tiny" / "tiny_exp"
    assert list(run.glob("events.out.tfevents.*"))
    s = _scalars(run)
    assert _steps(s, "train/loss") == list(range(2, 17, 2))  # 8 steps per epoch
    assert _steps(s, "train/lr") == _steps(s, "train/loss")
    assert _steps(s, "train/samples_per_s") == _steps(s, "train/loss")
    assert _steps(s, "train/grad_norm") == _steps(s, "train/loss")  # clipping is on by default
    assert all(v > 0 for _, v in s["train/samples_per_s"] + s["train/grad_norm"])
    history = results["history"]
    assert _steps(s, "valid/AUC") == [h["step"] for h in history] == [8, 16]
    assert [v for _, v in s["valid/AUC"]] == pytest.approx([h["AUC"] for h in history])
    assert _steps(s, "valid/logloss") == _steps(s, "valid/gAUC") == [8, 16]
    assert s["final/valid_AUC"][0][1] == pytest.approx(results["valid"]["AUC"])
    assert s["final/test_AUC"][0][1] == pytest.approx(results["test"]["AUC"])
    # the first point's loss is the mean over steps 1-2 (the epoch's running loss restarts)
    assert 0 < s["train/loss"][0][1] < 2


def test_resumed_run_continues_the_same_curves(tmp_path, tiny_data, every_2, monkeypatch):
    """A kill at step 6 (last.pt at step 4, after its evaluation) wrote points 5-6 that the
    resumed run writes again: TensorBoard's reader shows each step once, as uninterrupted."""
    params = dict(epochs=2, eval_steps=4)
    cfg_dir, expid = write_experiment(tmp_path / "full", tiny_data, **params)
    full_results = train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    full = _scalars(tmp_path / "full" / "ckpt" / "tiny" / "tiny_exp")

    cfg_dir, expid = write_experiment(tmp_path / "killed", tiny_data, **params)
    cfg = load_config(cfg_dir, expid)
    real_step = tracking.RunTracker.train_step

    def step_then_die(self, step, *args, **kwargs):
        real_step(self, step, *args, **kwargs)
        if step == 6:
            raise KeyboardInterrupt("simulated kill at step 6")

    monkeypatch.setattr(tracking.RunTracker, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, gpu=-1, progress=False)
    run = tmp_path / "killed" / "ckpt" / "tiny" / "tiny_exp"
    assert ckpt_io.load_checkpoint(run / "last.pt")["trainer_state"]["step"] == 4
    assert _steps(_scalars(run), "train/loss") == [2, 4, 6]
    monkeypatch.setattr(tracking.RunTracker, "train_step", real_step)
    resumed_results = train(cfg, gpu=-1, resume=True, progress=False)
    resumed = _scalars(run)
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    for tag in ("train/loss", "train/lr", "valid/AUC", "valid/logloss"):
        steps = _steps(resumed, tag)
        assert steps == sorted(set(steps)), tag  # strictly increasing: no duplicates
        assert steps == _steps(full, tag), tag
    assert [v for _, v in resumed["valid/AUC"]] == pytest.approx([v for _, v in full["valid/AUC"]])
    assert [v for _, v in resumed["train/loss"]] == pytest.approx(
        [v for _, v in full["train/loss"]]
    )
    assert resumed_results["valid"] == full_results["valid"]


def test_a_fresh_run_hides_an_older_runs_curves(tmp_path, tiny_data, every_2):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=2)
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1)
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    s = _scalars(tmp_path / "ckpt" / "tiny" / "tiny_exp")
    assert _steps(s, "train/loss") == [2, 4, 6, 8] and _steps(s, "valid/AUC") == [8]


def test_tensorboard_false_writes_no_event_files(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1, tensorboard=False)
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    run = tmp_path / "ckpt" / "tiny" / "tiny_exp"
    assert (run / "metrics.json").is_file() and not list(run.glob("events.out.tfevents.*"))


def test_finish_writes_baselines_and_hparams_and_tolerates_their_absence(tmp_path):
    results = {
        "valid": {"AUC": 0.7, "logloss": 0.5, "gAUC": float("nan"), "cold_rows": 3},
        "history": [{"step": 10, "AUC": 0.7}],
        "baselines": {"popularity": {"AUC": 0.6, "logloss": 0.55}, "logreg": {"AUC": 0.65}},
    }
    for folder, res in (("with", results), ("without", {"valid": {"AUC": 0.7}})):
        tracker = tracking.RunTracker()
        tracker.start(tmp_path / folder, enabled=True)
        tracker.finish(res, {"learning_rate": 1e-3, "units": [64, 32], "max_len": None})
        tracker.close()
    s = _scalars(tmp_path / "with")
    assert s["baselines/popularity/AUC"] == [(10, pytest.approx(0.6))]
    assert s["baselines/logreg/AUC"] == [(10, pytest.approx(0.65))]
    assert "final/valid_gAUC" not in s and s["final/valid_AUC"][0][1] == pytest.approx(0.7)
    assert set(_scalars(tmp_path / "without")) == {"final/valid_AUC"}
    acc = EventAccumulator(str(tmp_path / "with"), size_guidance={"tensors": 0})
    acc.Reload()
    assert acc.PluginTagToContent("hparams")  # the session start, with the hparams
