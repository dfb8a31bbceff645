"""torchrun on CPU (gloo): two ranks train like one, rank 0 alone writes, every row counts once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmctr.data.batching import BatchLoader
from mmctr.data.dataset import read_split
from mmctr.training import checkpoint as ckpt_io
from mmctr.training.metrics import evaluate_predictions
from mmctr.training.trainer import predict_probs

from .helpers import write_experiment

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(nproc: int, workdir: Path, cfg_dir: Path, expid: str, *extra: str) -> None:
    """``torchrun --standalone --nproc_per_node=nproc run_expid.py ...`` on CPU; must exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            str(ROOT / "run_expid.py"),
            "--config",
            str(cfg_dir),
            "--expid",
            expid,
            "--gpu",
            "-1",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_two_ranks_on_cpu(tmp_path, tiny_data):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=2, batch_size=128)
    _torchrun(2, tmp_path, cfg_dir, expid)
    run = tmp_path / "ckpt" / "tiny" / expid
    events = [p.name for p in run.glob("events.out.tfevents.*")]
    assert len(events) == 1  # TensorBoard: only rank 0 writes
    names = sorted(p.name for p in run.iterdir() if p.name not in events)
    assert names == [
        "config.yaml",
        "curves.png",
        "last.pt",
        "metrics.json",
        "model.pt",
        "train.log",
    ]
    log = (run / "train.log").read_text()
    assert log.count("world size 2") == 1  # only rank 0 writes the log
    # every epoch saw the whole training set exactly once across the two ranks
    seen = [int(n) for n in re.findall(r"epoch \d+ done: (\d+) samples", log)]
    assert seen == [2000, 2000]
    # the reported validation metrics equal a single process scoring the saved best checkpoint
    metrics = json.loads((run / "metrics.json").read_text())
    model, cfg, ckpt = ckpt_io.load_model(run / "model.pt")
    valid = read_split(
        tiny_data / "valid.parquet",
        cfg.dataset,
        n_items=300,
        max_len=cfg.trainer.max_len,
        group_col="user_id",
    )
    probs = predict_probs(model, BatchLoader(valid, 4096, min_seq_len=cfg.model.first_k_cols))
    single = evaluate_predictions(valid.labels, probs, valid.groups)
    assert single["AUC"] == pytest.approx(metrics["valid"]["AUC"], abs=1e-6)
    assert single["logloss"] == pytest.approx(metrics["valid"]["logloss"], abs=1e-6)
    assert np.isfinite(single["gAUC"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_rank_with_an_empty_last_batch(tmp_path, tiny_data):
    """3 ranks x batch 666 on 2,000 rows: the 2-row rest would leave rank 2 without rows; it
    joins the batch before it. Training must neither hang nor crash, every row counts once."""
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1, batch_size=666)
    _torchrun(3, tmp_path, cfg_dir, expid)
    log = (tmp_path / "ckpt" / "tiny" / expid / "train.log").read_text()
    assert re.findall(r"epoch \d+ done: (\d+) samples", log) == ["2000"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_torchrun_resume_equals_an_uninterrupted_run(tmp_path, tiny_data):
    """Each rank resumes its own random streams (dropout differs per rank): 1 epoch, then
    --resume to 2, gives the uninterrupted 2-epoch run's metrics exactly."""
    histories = []
    for name, runs in (
        ("full", [["--override", "epochs=2"]]),
        ("resumed", [[], ["--resume", "--override", "epochs=2"]]),
    ):
        cfg_dir, expid = write_experiment(tmp_path / name, tiny_data, epochs=1, batch_size=256)
        for extra in runs:
            _torchrun(2, tmp_path / name, cfg_dir, expid, *extra)
        metrics = json.loads(
            (tmp_path / name / "ckpt" / "tiny" / expid / "metrics.json").read_text()
        )
        histories.append([(h["step"], h["AUC"], h["train_loss"]) for h in metrics["history"]])
    assert histories[0] == histories[1] and len(histories[0]) == 2
