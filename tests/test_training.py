"""The trainer on the tiny preset: outputs, resume equality, NaN guard, accumulation, determinism."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mmctr.config import load_config
from mmctr.training import checkpoint as ckpt_io
from mmctr.training import trainer as trainer_mod
from mmctr.training.trainer import TrainingDiverged, _window_sizes, train

from .helpers import write_experiment


def _train(tmp_path, tiny_data, overrides=(), **params):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, **params)
    cfg = load_config(cfg_dir, expid, overrides=list(overrides))
    return cfg, train(cfg, gpu=-1, progress=False)


def test_run_folder_outputs_exist_and_parse(tmp_path, tiny_data):
    cfg, results = _train(tmp_path, tiny_data)
    run = tmp_path / "ckpt" / "tiny" / "tiny_exp"
    assert results["run_dir"] == str(run)
    model, cfg2, ckpt = ckpt_io.load_model(run / "model.pt")
    assert cfg2.expid == "tiny_exp" and ckpt["valid"]["AUC"] == pytest.approx(
        results["valid"]["AUC"]
    )
    last = ckpt_io.load_checkpoint(run / "last.pt")
    assert last["trainer_state"]["epoch"] == 2 and "optimizer_state" in last and "rng" in last
    assert yaml.safe_load((run / "config.yaml").read_text())["expid"] == "tiny_exp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["valid"]) >= {"AUC", "logloss", "gAUC"}
    assert 0.5 < metrics["valid"]["AUC"] <= 1.0
    assert len(metrics["history"]) == 2 and "test" in metrics
    epochs = metrics["epoch_seconds"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(0 < e["loop_seconds"] <= e["seconds"] for e in epochs)
    assert sum(e["seconds"] for e in epochs) <= metrics["train_seconds"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log1 = (run / "train.log").read_text()
    assert "tiny_exp" in log1 and "best valid" in log1
    # a rerun appends to the log, never truncates it
    train(cfg, gpu=-1, progress=False)
    log2 = (run / "train.log").read_text()
    assert log2.startswith(log1) and log2.count("expid tiny_exp") == 2
    assert not list(run.glob("*.tmp"))


def test_same_seed_gives_identical_metrics(tmp_path, tiny_data):
    _, a = _train(tmp_path / "a", tiny_data, epochs=1)
    _, b = _train(tmp_path / "b", tiny_data, epochs=1)
    assert a["valid"] == b["valid"]


def test_killed_after_an_epoch_and_resumed_matches_uninterrupted(tmp_path, tiny_data, monkeypatch):
    _, full = _train(tmp_path / "full", tiny_data, epochs=3)

    cfg_dir, expid = write_experiment(tmp_path / "killed", tiny_data, epochs=3)
    cfg = load_config(cfg_dir, expid)
    real_save_last = ckpt_io.save_last

    def save_then_die(*args, **kwargs):
        real_save_last(*args, **kwargs)
        raise KeyboardInterrupt("simulated kill after the first epoch")

    monkeypatch.setattr(ckpt_io, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, gpu=-1, progress=False)
    monkeypatch.setattr(ckpt_io, "save_last", real_save_last)
    resumed = train(cfg, gpu=-1, resume=True, progress=False)
    assert resumed["valid"] == full["valid"]
    assert [h["AUC"] for h in resumed["history"]] == [h["AUC"] for h in full["history"]]
    assert resumed["test"] == full["test"]


def test_resume_refuses_another_config_but_allows_more_epochs(tmp_path, tiny_data):
    from mmctr.config import ConfigError

    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1, net_dropout=0.5)
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    record = tmp_path / "ckpt" / "tiny" / expid / "config.yaml"
    before = record.read_text()
    with pytest.raises(ConfigError, match=r"another config \(net_dropout: 0.5 -> 0.1\)"):
        cfg = load_config(cfg_dir, expid, overrides=["net_dropout=0.1"])
        train(cfg, gpu=-1, resume=True, progress=False)
    assert record.read_text() == before  # refused before the run folder was touched
    more = load_config(cfg_dir, expid, overrides=["epochs=2", "verbose=0"])
    resumed = train(more, gpu=-1, resume=True, progress=False)
    assert resumed["epochs"] == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        train(load_config(cfg_dir, expid), gpu=-1, resume=True, progress=False)


def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(tmp_path, tiny_data, monkeypatch):
    real_build = trainer_mod.build_model
    calls = {"n": 0}

    def build_poisoned(*args, **kwargs):
        model = real_build(*args, **kwargs)
        forward = model.forward

        def poisoned(batch):
            out = forward(batch)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 10:  # second epoch (8 batches per epoch)
                    return out * float("nan")
            return out

        model.forward = poisoned
        return model

    monkeypatch.setattr(trainer_mod, "build_model", build_poisoned)
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=3)
    with pytest.raises(TrainingDiverged, match="loss became nan") as err:
        train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    assert "last good checkpoints are kept" in str(err.value)
    run = tmp_path / "ckpt" / "tiny" / "tiny_exp"
    assert ckpt_io.load_checkpoint(run / "last.pt")["trainer_state"]["epoch"] == 1
    assert (run / "model.pt").is_file()


def test_accumulation_windows_include_the_final_partial_one():
    assert _window_sizes(2000, 256, 3) == [768, 768, 464]
    assert sum(_window_sizes(2000, 256, 3)) == 2000
    assert _window_sizes(1000, 100, 1) == [100] * 10


def test_accumulation_steps_on_the_last_partial_window(tmp_path, tiny_data):
    # 2000 rows / 256 = 8 batches; accumulation 3 -> windows 3 + 3 + 2 = 3 steps per epoch
    _, results = _train(tmp_path, tiny_data, epochs=2, accumulation_steps=3)
    assert [h["step"] for h in results["history"]] == [3, 6]


def test_eval_steps_and_early_stopping(tmp_path, tiny_data):
    _, results = _train(
        tmp_path, tiny_data, epochs=3, eval_steps=4, early_stop_patience=1, learning_rate=0.5
    )
    steps = [h["step"] for h in results["history"]]
    assert steps[:2] == [4, 8]
    assert len(steps) < 6  # stopped early: lr 0.5 cannot keep improving


def test_missing_gpu_is_an_error_not_a_fallback(tmp_path, tiny_data):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg_dir, expid = write_experiment(tmp_path, tiny_data)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        train(load_config(cfg_dir, expid), gpu=0, progress=False)


@pytest.mark.parametrize(("eval_steps", "expected"), [(100, [16]), (5, [5, 10, 15, 16])])
def test_eval_steps_runs_always_end_evaluated(tmp_path, tiny_data, eval_steps, expected):
    """2 epochs of 8 steps: the last step is evaluated even when eval_steps does not divide
    the run, or exceeds it (then model.pt comes from that one evaluation)."""
    _, results = _train(tmp_path, tiny_data, epochs=2, eval_steps=eval_steps)
    assert [h["step"] for h in results["history"]] == expected
    assert (tmp_path / "ckpt" / "tiny" / "tiny_exp" / "model.pt").is_file()


def test_a_monitor_that_is_nan_stops_with_a_clear_error(tmp_path, tiny_data_copy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmctr.training.trainer import MonitorNotFinite

    valid = pq.read_table(tiny_data_copy / "valid.parquet")
    zeros = pa.array([0] * valid.num_rows, type=valid.schema.field("label").type)
    valid = valid.set_column(valid.schema.get_field_index("label"), "label", zeros)
    pq.write_table(valid, tiny_data_copy / "valid.parquet")
    with pytest.raises(MonitorNotFinite, match=r"valid.parquet .*labels hold only \[0"):
        _train(tmp_path, tiny_data_copy, epochs=1)


def test_batch_norm_trains_when_one_row_would_be_left_over(tmp_path, tiny_data):
    """2,000 rows at batch 1,999: the 1-row rest joins the batch before it (BatchNorm
    cannot train on one row)."""
    _, results = _train(tmp_path, tiny_data, epochs=1, batch_size=1999, batch_norm=True)
    assert results["epochs"] == 1


def test_killed_mid_epoch_after_an_evaluation_and_resumed_matches_uninterrupted(
    tmp_path, tiny_data, monkeypatch
):
    """With eval_steps, last.pt is also written after each evaluation inside an epoch: a kill
    after step 4 of 8 resumes at batch 5 with the same data order, random streams and running
    loss, and ends exactly as the uninterrupted run."""
    params = dict(epochs=2, eval_steps=4)
    _, full = _train(tmp_path / "full", tiny_data, **params)

    cfg_dir, expid = write_experiment(tmp_path / "killed", tiny_data, **params)
    cfg = load_config(cfg_dir, expid)
    real_save_last = ckpt_io.save_last
    saved_states = []

    def save_then_die(path, model, optimizer, state, *args, **kwargs):
        real_save_last(path, model, optimizer, state, *args, **kwargs)
        saved_states.append(dict(state))
        raise KeyboardInterrupt("simulated kill after the first last.pt")

    monkeypatch.setattr(ckpt_io, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, gpu=-1, progress=False)
    assert saved_states[0]["batches_done"] == 4 and saved_states[0]["epoch"] == 0
    monkeypatch.setattr(ckpt_io, "save_last", real_save_last)
    resumed = train(cfg, gpu=-1, resume=True, progress=False)
    assert [(h["step"], h["AUC"], h["train_loss"]) for h in resumed["history"]] == [
        (h["step"], h["AUC"], h["train_loss"]) for h in full["history"]
    ]
    assert resumed["valid"] == full["valid"] and resumed["test"] == full["test"]


def test_resume_allows_moved_data_and_defaults_and_a_larger_patience(tmp_path, tiny_data):
    """A moved data root, eval_batch_size and a key written out at its default are no change;
    a larger early_stop_patience lets an early-stopped run go on."""
    import shutil

    cfg_dir, expid = write_experiment(
        tmp_path, tiny_data, epochs=6, early_stop_patience=1, learning_rate=0.5
    )
    first = train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    assert first["epochs"] < 6  # stopped early
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)
    text = (cfg_dir / "dataset_config.yaml").read_text().replace(str(tiny_data), str(moved))
    (cfg_dir / "dataset_config.yaml").write_text(text)
    more = load_config(
        cfg_dir,
        expid,
        overrides=["early_stop_patience=20", "eval_batch_size=512", "shuffle=true"],
    )
    resumed = train(more, gpu=-1, resume=True, progress=False)
    assert resumed["epochs"] == 6 and len(resumed["history"]) > len(first["history"])


def test_atomic_torch_save_never_leaves_a_half_written_checkpoint(tmp_path) -> None:
    """A save that fails mid-stream (after tensors were written) keeps the previous file and
    leaves no temp file; a good save replaces it."""
    from mmctr.utils import atomic_torch_save

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom mid-write")

    path = tmp_path / "last.pt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="boom mid-write"):
        atomic_torch_save({"w": torch.zeros(100_000), "z": Unpicklable()}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    atomic_torch_save({"step": 2, "w": torch.arange(5.0)}, path)
    loaded = torch.load(path)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(5.0))


def test_a_config_the_model_refuses_fails_under_check_and_leaves_a_finished_run_alone(
    tmp_path, tiny_data, capsys
):
    """num_heads that does not divide the token width is a one-line user error under --check
    and in training, where it must not overwrite the finished run's config.yaml."""
    from mmctr.cli.common import run_cli
    from mmctr.cli.run_expid import main
    from mmctr.config import ConfigError

    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1)
    run = tmp_path / "ckpt" / "tiny" / expid
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="cannot be built from this config: num_heads=5"):
        train(load_config(cfg_dir, expid, ["num_heads=5"]), gpu=-1, progress=False)
    assert (run / "config.yaml").read_text() == before

    args = ["--config", str(cfg_dir), "--expid", expid, "--check"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([*args, "--override", "num_heads=5"]))
    assert exit_info.value.code == 2
    assert "error: model Transformer_DCN cannot be built" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(args))
    assert exit_info.value.code == 0
    assert "its data files and model are valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "malloc keeps freed memory"),
        ({"MMCTR_MALLOC": "default"}, "glibc malloc defaults"),
        ({"MALLOC_ARENA_MAX": "2"}, "as the MALLOC_* environment sets it"),
    ],
)
def test_keep_freed_memory_is_on_by_default_and_yields_to_the_user(env, expected):
    """train() makes glibc keep freed memory (big activation blocks reused, not re-faulted);
    MMCTR_MALLOC=default or any MALLOC_* variable of the user's leaves malloc alone."""
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MMCTR_"))}
    code = "from mmctr.utils import keep_freed_memory as k; a = k(); print(a == k(), a)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("True ") and expected in out
