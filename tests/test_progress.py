"""The shared progress helper, and a run whose output is captured to a file."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmctr.progress import Progress, format_seconds
from mmctr.training import tracking

from .helpers import write_experiment

ROOT = Path(__file__).resolve().parents[1]


def test_lines_not_bars_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    bar = Progress(10, "epoch 1/2", unit="batch", rate_unit="samples", stream=out, interval=0)
    for _ in range(4):
        bar.update(1, rows=100)
    bar.set_postfix(loss=0.43219)
    bar.update(1, rows=100)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and bar.lines == 5
    last = text.splitlines()[-1]
    assert last.startswith("epoch 1/2: 50% (5/10 batch) |")
    assert "samples/s" in last and "ETA" in last and "loss 0.4322" in last


def test_lines_are_spaced_by_the_interval_and_disabled_writes_nothing():
    out = io.StringIO()
    bar = Progress(1000, "embed", unit="img", stream=out, interval=3600)
    for _ in range(1000):
        bar.update(1)
    assert out.getvalue() == ""
    quiet = Progress(10, "x", stream=out, interval=0, enabled=False)
    quiet.update(5)
    assert out.getvalue() == "" and quiet.n == 5


def test_write_callback_and_refresh():
    lines: list[str] = []
    p = Progress(3, "tuner", unit="runs", bar=False, write=lines.append, interval=0)
    p.set_postfix(running="a, b")
    p.refresh()
    assert lines == [lines[0]] and lines[0].startswith("tuner: 0% (0/3 runs)")
    assert "running a, b" in lines[0]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 7260)] == ["4s", "1m05s", "2h01m"]


@pytest.mark.slow
def test_a_run_captured_to_a_file_has_no_carriage_returns_and_an_event_file(tmp_path, tiny_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=2, batch_size=64)
    log = tmp_path / "stdout.txt"
    env = {**os.environ, "MMCTR_PROGRESS_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT / "src")
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run_expid.py"), "--config", str(cfg_dir)]
            + ["--expid", expid, "--gpu", "-1"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            timeout=600,
        )
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert "epoch 1/2: " in text and "samples/s" in text  # the progress lines
    run = tmp_path / "ckpt" / "tiny" / expid
    evals = [h["step"] for h in json.loads((run / "metrics.json").read_text())["history"]]
    acc = EventAccumulator(str(run))
    acc.Reload()
    loss = [e.step for e in acc.Scalars("train/loss")]
    every = tracking.SCALARS_EVERY
    assert len(evals) == 2 and loss == list(range(every, evals[-1] + 1, every))
    assert [e.step for e in acc.Scalars("valid/AUC")] == evals
