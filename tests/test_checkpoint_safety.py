"""Checkpoints are read with torch.load(weights_only=True): a crafted file cannot run code."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmctr.training import checkpoint as ckpt_io
from mmctr.training.checkpoint import CheckpointError, load_checkpoint

from .helpers import write_experiment

ROOT = Path(__file__).resolve().parents[1]


class _TouchMarker:
    """Unpickling this would run ``touch <marker>`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpenMarker(_TouchMarker):
    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _torch_file(tmp_path: Path, payload) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"format": "mmctr.model/1", "model_state": {}, "x": payload}, path)
    return path


def _bare_pickle(tmp_path: Path, payload, protocol: int = 2) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"format": "mmctr.model/1", "x": payload}, protocol=protocol))
    return path


def _bare_pickle_v5(tmp_path: Path, payload) -> Path:
    return _bare_pickle(tmp_path, payload, protocol=5)


@pytest.mark.parametrize("write", [_torch_file, _bare_pickle, _bare_pickle_v5])
@pytest.mark.parametrize("kind", [_TouchMarker, _OpenMarker])
def test_a_crafted_pickle_checkpoint_is_refused_before_its_code_runs(tmp_path, write, kind):
    marker = tmp_path / "pwned"
    path = write(tmp_path, kind(marker))
    expected = "not a readable" if write is _bare_pickle_v5 else "refused: loading it could run"
    with pytest.raises(CheckpointError, match=expected) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "from the file was run" in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        ckpt_io.load_model(path)
    assert not marker.exists()


def test_the_refusal_names_the_global_the_file_asks_for(tmp_path):
    path = _torch_file(tmp_path, _TouchMarker(tmp_path / "pwned"))
    with pytest.raises(CheckpointError, match=r"it names posix\.system|os\.system"):
        load_checkpoint(path)


def test_prediction_cli_refuses_a_crafted_checkpoint_without_running_it(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1)
    marker = tmp_path / "pwned"
    evil = _torch_file(tmp_path, _TouchMarker(marker))
    out = tmp_path / "sub"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "prediction.py"), "--config", str(cfg_dir), "--expid", expid]
        + ["--checkpoint", str(evil), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(evil) in errors[0] and "refused" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())


def test_checkpoints_hold_only_plain_values_and_tensors(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    state = {"best": np.float64(0.5), "history": [{"AUC": np.float32(0.25)}], "step": np.int64(3)}
    ckpt_io.save_last(tmp_path / "last.pt", model, opt, state, {"lr": np.float64(1e-3)})
    saved = torch.load(tmp_path / "last.pt", weights_only=True)  # no allowlist at all
    assert saved["trainer_state"] == {"best": 0.5, "history": [{"AUC": 0.25}], "step": 3}
    assert type(saved["trainer_state"]["best"]) is float
    assert isinstance(saved["rng"]["numpy"][1], list)


def test_an_old_last_pt_with_a_numpy_rng_array_still_loads_and_restores(tmp_path):
    """last.pt files written before weights-only loading hold numpy's key array: exactly
    those numpy globals are allowed, so --resume of an older run keeps working."""
    np.random.seed(11)  # noqa: NPY002
    old_state = np.random.get_state()  # noqa: NPY002 (the ndarray form older files hold)
    expected = np.random.random(3)  # noqa: NPY002
    rng = {**ckpt_io.rng_states(), "numpy": old_state}
    torch.save({"format": "mmctr.last/1", "rng": rng}, tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    ckpt_io.set_rng_states(loaded["rng"])
    assert np.array_equal(np.random.random(3), expected)  # noqa: NPY002


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    np.random.seed(5)  # noqa: NPY002
    torch.save({"format": "mmctr.last/1", "rng": ckpt_io.rng_states()}, tmp_path / "last.pt")
    expected = np.random.random(4)  # noqa: NPY002
    ckpt_io.set_rng_states(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert np.array_equal(np.random.random(4), expected)  # noqa: NPY002


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 3, b"PK\x03\x04trunc"])
def test_unreadable_files_are_a_one_line_checkpoint_error(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="model.pt") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", ""])
def test_an_expid_that_is_not_a_plain_name_is_refused_before_anything_is_written(tmp_path, name):
    """expid and dataset_id name folders under model_root and the submission zip: one holding
    '../' would write outside them."""
    import yaml

    from mmctr.config import ConfigError, load_config
    from mmctr.prediction.submission import SubmissionError, _output_paths

    cfg_dir, expid = write_experiment(tmp_path, tmp_path / "data")
    doc = yaml.safe_load((cfg_dir / "model_config.yaml").read_text())
    doc[name] = doc.pop(expid)
    (cfg_dir / "model_config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="is not a plain name"):
        load_config(cfg_dir, name)
    with pytest.raises(SubmissionError, match="is not a plain name"):
        _output_paths(tmp_path / "sub", name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]
