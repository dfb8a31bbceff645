"""The comparison of runs (mmctr.compare): two runs, an interrupted one and broken folders."""

from __future__ import annotations

import csv
import io
import sys

import pytest

from mmctr.cli import compare as compare_cli
from mmctr.compare import compare, read_run
from mmctr.config import load_config
from mmctr.training import checkpoint as ckpt_io
from mmctr.training.trainer import train

from .helpers import write_experiment


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_data):
    """ckpt/tiny/{lr_a, lr_b} finished, lr_c interrupted after epoch 1, two broken folders."""
    base = tmp_path_factory.mktemp("compare")
    for expid, lr in (("lr_a", 3e-3), ("lr_b", 1e-4)):
        cfg_dir, _ = write_experiment(base / expid, tiny_data, expid=expid, learning_rate=lr)
        cfg = load_config(cfg_dir, expid, overrides=[f"model_root={base / 'ckpt'}"])
        train(cfg, gpu=-1, progress=False)
    cfg_dir, _ = write_experiment(base / "lr_c", tiny_data, expid="lr_c", epochs=3)
    cfg = load_config(cfg_dir, "lr_c", overrides=[f"model_root={base / 'ckpt'}"])
    real = ckpt_io.save_last

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    ckpt_io.save_last = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, gpu=-1, progress=False)
    finally:
        ckpt_io.save_last = real
    root = base / "ckpt"
    broken = root / "tiny" / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("expid: [unclosed\n")
    (broken / "metrics.json").write_text('{"valid": ')
    (root / "tiny" / "empty_folder").mkdir()
    return root


def test_table_csv_and_plot_of_two_runs_and_broken_folders(runs_root, capsys):
    assert compare_cli.main([str(runs_root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"3 run(s) under {runs_root}, best first:"
    header = lines[1].split()
    assert header[:2] == ["expid", "model"]
    assert "learning_rate" in header and "seed" not in header  # only what differs
    assert {"valid_AUC", "valid_logloss", "valid_gAUC", "test_AUC", "status"} <= set(header)
    assert "skipped tiny/broken: incomplete: config.yaml unreadable" in out
    assert "skipped tiny/empty_folder: not a run" in out

    rows = list(csv.DictReader(io.StringIO((runs_root / "runs.csv").read_text())))
    by_id = {r["expid"]: r for r in rows}
    assert set(by_id) == {"lr_a", "lr_b", "lr_c", "broken", "empty_folder"}
    assert by_id["lr_a"]["status"] == by_id["lr_b"]["status"] == "finished"
    assert by_id["lr_c"]["status"] in ("interrupted", "running?")
    assert by_id["lr_c"]["epochs"] == "1" and by_id["lr_a"]["epochs"] == "2"
    assert float(by_id["lr_a"]["learning_rate"]) == 3e-3
    # sorted by the monitor (valid AUC, max) among the runs; the non-runs last
    aucs = [float(r["valid_AUC"]) for r in rows[:3]]
    assert aucs == sorted(aucs, reverse=True)
    assert [r["expid"] for r in rows[3:]] == ["broken", "empty_folder"]
    assert by_id["lr_a"]["test_AUC"] and not by_id["lr_c"]["test_AUC"]
    assert float(by_id["lr_a"]["samples_per_s"]) > 0 and float(by_id["lr_a"]["wall_s"]) > 0
    assert (runs_root / "runs_valid_auc.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_run_reads_its_evaluations_from_the_log(runs_root):
    run = read_run(runs_root / "tiny" / "lr_c")
    assert [h["step"] for h in run.history] == [8]
    assert run.valid["AUC"] == pytest.approx(run.history[0]["AUC"])


def test_no_runs_is_a_user_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "nothing").mkdir()
    out = compare(tmp_path)
    assert out["plot"] is None and out["not_runs"] == [("nothing", out["rows"][0]["status"])]
    monkeypatch.setattr(sys, "argv", ["compare", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        compare_cli.entry()
    assert exc.value.code == 2 and "no run folders" in capsys.readouterr().err
