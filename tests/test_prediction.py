"""prediction.py: exact row order, a valid zip, named errors, the trainer's test AUC."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmctr.config import load_config
from mmctr.data.batching import BatchLoader
from mmctr.data.contract import DataContractError
from mmctr.data.dataset import read_split
from mmctr.prediction import predict_submission
from mmctr.prediction.submission import SubmissionError, write_submission
from mmctr.training import checkpoint as ckpt_io
from mmctr.training.trainer import train

from .helpers import write_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("pred")
    cfg_dir, expid = write_experiment(tmp, tiny_data, epochs=1, shuffle=True)
    results = train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    return tmp, cfg_dir, expid, results


def test_predictions_equal_model_outputs_in_file_order(trained, tiny_data):
    tmp, cfg_dir, expid, _ = trained
    out = tmp / "sub"
    summary = predict_submission(cfg_dir, expid, out_dir=out, progress=False)
    df = pd.read_csv(out / "prediction.csv")
    assert list(df.columns) == ["ID", "Task2"]
    assert np.array_equal(df["ID"].to_numpy(), np.arange(500))
    # the reference: the checkpoint's model applied to the test rows one small slice at a time
    model, cfg, ckpt = ckpt_io.load_model(Path(summary["checkpoint"]))
    split = read_split(
        tiny_data / "test.parquet",
        cfg.dataset,
        n_items=300,
        max_len=cfg.trainer.max_len,
        require_label=False,
    )
    loader = BatchLoader(split, 7, min_seq_len=cfg.model.first_k_cols)
    with torch.no_grad():
        ref = torch.cat([torch.sigmoid(model(b)) for b in loader]).numpy()
    np.testing.assert_allclose(df["Task2"].to_numpy(), ref, atol=1e-6)
    assert summary["rows"] == 500


def test_zip_holds_one_csv_with_the_right_header(trained):
    tmp, cfg_dir, expid, _ = trained
    out = tmp / "zip"
    predict_submission(cfg_dir, expid, out_dir=out, column="Task1&2", progress=False)
    with zipfile.ZipFile(out / f"{expid}.zip") as zf:
        assert zf.namelist() == ["prediction.csv"]
        first = zf.read("prediction.csv").decode().splitlines()[0]
    assert first == "ID,Task1&2"


def test_test_auc_matches_the_trainer(trained):
    tmp, cfg_dir, expid, results = trained
    s = predict_submission(cfg_dir, expid, out_dir=tmp / "auc", progress=False)
    assert s["test_AUC"] == pytest.approx(results["test"]["AUC"], abs=1e-6)


def test_bad_test_files_fail_with_named_messages(trained, tiny_data):
    tmp, cfg_dir, expid, _ = trained
    table = pq.read_table(tiny_data / "test.parquet")
    missing = tmp / "missing_col.parquet"
    pq.write_table(table.drop(["views_level"]), missing)
    with pytest.raises(DataContractError, match="views_level"):
        predict_submission(cfg_dir, expid, out_dir=tmp / "bad", test_data=missing, progress=False)
    out_of_range = tmp / "bad_item.parquet"
    ids = table.column("item_id").to_numpy().copy()
    ids[3] = 99_999
    pq.write_table(
        table.set_column(table.column_names.index("item_id"), "item_id", pa.array(ids)),
        out_of_range,
    )
    with pytest.raises(DataContractError, match="item_id"):
        predict_submission(
            cfg_dir, expid, out_dir=tmp / "bad", test_data=out_of_range, progress=False
        )
    assert not (tmp / "bad" / "prediction.csv").exists()


def test_missing_run_folder_is_a_clear_error(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data)
    with pytest.raises(FileNotFoundError, match="train it first"):
        predict_submission(cfg_dir, expid, out_dir=tmp_path / "sub", progress=False)


def test_write_submission_validates_before_writing(tmp_path):
    with pytest.raises(SubmissionError, match=r"not finite values in \[0, 1\]"):
        write_submission(np.array([0.1, np.nan, 0.3]), tmp_path, "x")
    with pytest.raises(SubmissionError, match="column"):
        write_submission(np.array([0.1]), tmp_path, "x", column="Task3")
    assert not list(tmp_path.iterdir())


def test_prediction_cli_error_is_one_paragraph(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "prediction.py"), "--config", str(cfg_dir), "--expid", expid],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train it first" in proc.stderr


def test_placeholder_test_labels_are_not_an_error(trained, tiny_data):
    tmp, cfg_dir, expid, _ = trained
    table = pq.read_table(tiny_data / "test.parquet")
    hidden = tmp / "hidden_labels.parquet"
    i = table.column_names.index("label")
    pq.write_table(
        table.set_column(i, "label", pa.array(np.full(table.num_rows, -1, dtype=np.int64))), hidden
    )
    s = predict_submission(cfg_dir, expid, out_dir=tmp / "hidden", test_data=hidden, progress=False)
    assert s["rows"] == 500 and "test_AUC" not in s


def test_the_config_as_loaded_now_decides_the_test_file(trained, tiny_data):
    """An override (or an edited dataset_config.yaml, or a moved data root) is honoured: the
    checkpoint gives the model, the config gives what to score."""
    tmp, cfg_dir, expid, _ = trained
    subset = tmp / "first_123.parquet"
    pq.write_table(pq.read_table(tiny_data / "test.parquet").slice(0, 123), subset)
    s = predict_submission(
        cfg_dir,
        expid,
        out_dir=tmp / "subset",
        overrides=[f"test_data={subset}"],
        progress=False,
    )
    assert s["rows"] == 123 and s["test_data"] == str(subset)
    assert len(pd.read_csv(tmp / "subset" / "prediction.csv")) == 123


def test_a_checkpoint_of_another_experiment_is_refused_by_name(trained, tiny_data, tmp_path):
    from mmctr.config import ConfigError

    tmp, cfg_dir, expid, _ = trained
    other_dir, other = write_experiment(tmp_path / "other", tiny_data, expid="other_exp")
    ckpt = tmp / "ckpt" / "tiny" / expid / "model.pt"
    kw = dict(checkpoint=ckpt, out_dir=tmp_path / "sub", progress=False)
    with pytest.raises(SubmissionError, match="holds expid 'tiny_exp'.*names 'other_exp'"):
        predict_submission(other_dir, other, **kw)
    # a config folder without the expid (a typo): the config's error, never a silent fall-back
    with pytest.raises(ConfigError, match="tiny_exp"):
        predict_submission(other_dir, expid, **kw)
    # so is an override the checkpoint's own config would drop
    with pytest.raises(ConfigError, match="test_daat"):
        predict_submission(cfg_dir, expid, overrides=["test_daat=x.parquet"], **kw)
    # no config folder at all: the checkpoint's own config, with a notice; the expid still counts
    gone = tmp_path / "no_such_config"
    with pytest.raises(SubmissionError, match="names 'tiny_typo'"):
        predict_submission(gone, "tiny_typo", **kw)
    with pytest.raises(ConfigError):
        predict_submission(gone, expid, overrides=[f"test_data={tiny_data}/test.parquet"], **kw)
    s = predict_submission(gone, expid, **kw)
    assert s["rows"] == 500 and "does not exist" in s["notices"][0]
    assert not any(p.name.startswith(".") for p in (tmp_path / "sub").iterdir())


def _predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "prediction.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_prediction_cli_user_errors_are_one_line_and_write_nothing(trained, tmp_path):
    """A resume checkpoint, a file that is no checkpoint, a bad --batch-size and an --out that
    is a file: each an ``error:`` line with exit 2, no traceback, nothing written."""
    tmp, cfg_dir, expid, _ = trained
    run = tmp / "ckpt" / "tiny" / expid
    junk = tmp_path / "junk.pt"
    junk.write_text("garbage\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    base = ["--config", str(cfg_dir), "--expid", expid, "--no-progress"]
    out = ["--out", str(tmp_path / "sub")]
    cases = [
        ([*base, *out, "--checkpoint", str(run / "last.pt")], "last.pt is for --resume"),
        ([*base, *out, "--checkpoint", str(junk)], "is not a readable torch checkpoint"),
        ([*base, *out, "--batch-size", "-1"], "expected an integer >= 1"),
        ([*base, "--out", str(a_file)], "is a file, not a folder"),
    ]
    for args, expected in cases:
        proc = _predict_cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and expected in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "junk.pt"]
    assert a_file.read_text() == "keep"


def test_the_csv_and_zip_are_replaced_together_or_not_at_all(trained, tmp_path, monkeypatch):
    from mmctr.prediction import submission

    tmp, cfg_dir, expid, _ = trained
    out = tmp_path / "sub"
    (out / f"{expid}.zip").mkdir(parents=True)  # the zip cannot be written
    (out / "prediction.csv").write_text("old\n")
    with pytest.raises(SubmissionError, match="a folder of that name is in the way"):
        predict_submission(cfg_dir, expid, out_dir=out, progress=False)  # refused up front
    # the same failure at the last moment, past the checks: the CSV is still the old one
    paths = (out / "prediction.csv", out / f"{expid}.zip")
    monkeypatch.setattr(submission, "_output_paths", lambda out_dir, expid: paths)
    with pytest.raises(IsADirectoryError):
        write_submission(np.array([0.5, 0.25]), out, expid, n_rows=2)
    assert (out / "prediction.csv").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["prediction.csv", f"{expid}.zip"]


def test_an_empty_test_file_or_a_row_count_mismatch_is_refused(trained, tiny_data, tmp_path):
    tmp, cfg_dir, expid, _ = trained
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(tiny_data / "test.parquet").slice(0, 0), empty)
    with pytest.raises(SubmissionError, match="has no rows"):
        predict_submission(cfg_dir, expid, test_data=empty, out_dir=tmp_path / "s", progress=False)
    with pytest.raises(SubmissionError, match="2 predictions for 3 test rows"):
        write_submission(np.array([0.1, 0.2]), tmp_path / "s", "x", n_rows=3)
    assert not (tmp_path / "s").exists()


@pytest.mark.filterwarnings("ignore:bf16. true on a CPU without")
def test_bf16_autocast_trains_and_predicts_on_the_cpu(tmp_path, tiny_data):
    """bf16: true runs training and prediction under CPU bf16 autocast (native on AMX or
    AVX512-BF16 CPUs, emulated elsewhere): the CSV is the model under autocast, not in fp32."""
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1, bf16=True)
    results = train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    log = (tmp_path / "ckpt" / "tiny" / expid / "train.log").read_text()
    assert "| bf16 True |" in log
    summary = predict_submission(cfg_dir, expid, out_dir=tmp_path / "sub", progress=False)
    assert summary["test_AUC"] == pytest.approx(results["test"]["AUC"], abs=2e-3)
    got = pd.read_csv(tmp_path / "sub" / "prediction.csv")["Task2"].to_numpy()
    model, cfg, _ = ckpt_io.load_model(Path(summary["checkpoint"]))
    split = read_split(
        tiny_data / "test.parquet", cfg.dataset, n_items=300, max_len=24, require_label=False
    )
    loader = BatchLoader(split, 7, min_seq_len=cfg.model.first_k_cols)
    with torch.no_grad():
        fp32 = torch.cat([torch.sigmoid(model(b)) for b in loader]).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.cat([torch.sigmoid(model(b).float()) for b in loader]).numpy()
    np.testing.assert_allclose(got, bf16, atol=1e-2)
    assert np.abs(got - fp32).max() > 1e-5  # autocast really applied
