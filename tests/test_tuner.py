"""run_param_tuner: FuxiCTR tuner files -> verified expids -> subprocess runs -> a results CSV.

The runs are real ``run_expid.py`` subprocesses on the tiny dataset with a very small model
(one epoch, a few seconds each), two at a time on the CPU.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from mmctr.cli.param_tuner import main as tuner_main
from mmctr.config import HASH_OK, ConfigError, load_config, parse_tuner_id
from mmctr.data.contract import microlens_dataset_config
from mmctr.tuning import expand_grid, run_tuner

BASE_EXPID = "TDCN_tiny"
HEADER_TAIL = ["valid_AUC", "valid_logloss", "valid_gAUC", "status", "seconds"]


def make_base(root: Path, data_dir: Path) -> tuple[Path, Path]:
    """A FuxiCTR config folder for the tiny data (absolute paths) -> (folder, model_root)."""
    base = root / "base"
    base.mkdir(parents=True)
    model_root = root / "ckpt"
    ds = asdict(microlens_dataset_config(data_dir, dataset_id="tiny"))
    ds.pop("dataset_id")
    (base / "dataset_config.yaml").write_text(yaml.safe_dump({"tiny": ds}, sort_keys=False))
    model = {
        "Base": {"model_root": str(model_root), "num_workers": 0, "verbose": 1},
        BASE_EXPID: {
            "model": "Transformer_DCN",
            "dataset_id": "tiny",
            "embedding_dim": 4,
            "transformer_layers": 1,
            "num_heads": 1,
            "dim_feedforward": 8,
            "first_k_cols": 2,
            "dcn_cross_layers": 1,
            "dcn_hidden_units": [8],
            "mlp_hidden_units": [4],
            "batch_size": 512,
            "max_len": 16,
            "epochs": 1,
            "learning_rate": 1.0e-3,
            "bf16": False,
        },
    }
    (base / "model_config.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return base, model_root


def write_tuner(root: Path, name: str, base: Path, space: dict, **top) -> Path:
    doc = {"base_config": str(base), "base_expid": BASE_EXPID, "dataset_id": "tiny", **top}
    doc["tuner_space"] = space
    path = root / "tuner" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# python run_param_tuner.py --config {path}\n" + yaml.safe_dump(doc, sort_keys=False)
    )
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def grid_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2 x 2 grid (learning_rate x embedding_dim), run once for the module."""
    root = tmp_path_factory.mktemp("tuner_grid")
    base, model_root = make_base(root, tiny_data)
    tuner = write_tuner(
        root, "grid", base, {"learning_rate": [1.0e-3, 2.0e-3], "embedding_dim": [4, 8]}
    )
    rows = run_tuner(tuner, gpus=[-1], max_parallel=2, echo=lambda _: None)
    return tuner, model_root, rows


def test_grid_runs_every_point_and_writes_the_csv(grid_run) -> None:
    tuner, model_root, rows = grid_run
    config_dir = tuner.parent / "grid"
    expids = [r["expid"] for r in rows]
    assert len(set(expids)) == 4
    assert [parse_tuner_id(e)[:2] for e in expids] == [(BASE_EXPID, i) for i in (1, 2, 3, 4)]
    # FuxiCTR order: the last axis varies fastest.
    assert [(r["learning_rate"], r["embedding_dim"]) for r in rows] == [
        (1e-3, 4),
        (1e-3, 8),
        (2e-3, 4),
        (2e-3, 8),
    ]
    for row in rows:
        cfg = load_config(config_dir, row["expid"])  # the written id verifies
        assert cfg.hash_check == HASH_OK
        assert (cfg.trainer.learning_rate, cfg.model.embedding_dim) == (
            row["learning_rate"],
            row["embedding_dim"],
        )
        assert row["status"] == "finished" and row["launched"] and row["exit_code"] == 0
        assert 0.0 < row["valid_AUC"] < 1.0
        assert Path(row["log"]).is_file()
        assert (Path(row["run_dir"]) / "metrics.json").is_file()

    header, records = read_csv(model_root / "grid.csv")
    assert header == ["expid", "learning_rate", "embedding_dim", *HEADER_TAIL]
    assert [r["expid"] for r in records] == expids
    assert all(r["status"] == "finished" and float(r["valid_AUC"]) > 0 for r in records)
    assert all(float(r["seconds"]) > 0 and r["valid_logloss"] for r in records)


def test_rerun_runs_nothing_when_everything_finished(grid_run) -> None:
    tuner, model_root, first = grid_run
    csv_path = model_root / "grid.csv"
    _, before = read_csv(csv_path)
    stamps = {r["expid"]: (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns for r in first}

    rows = run_tuner(tuner, gpus=[-1], echo=lambda _: None)
    assert not any(r["launched"] for r in rows)
    assert [r["status"] for r in rows] == ["finished"] * 4
    assert read_csv(csv_path)[1] == before  # same metrics and seconds
    for r in rows:
        assert (Path(r["run_dir"]) / "metrics.json").stat().st_mtime_ns == stamps[r["expid"]]


@pytest.mark.slow
def test_rerun_resumes_an_interrupted_experiment(grid_run) -> None:
    tuner, _, first = grid_run
    # An interrupted run (last.pt but no metrics.json) is resumed, and only that one.
    (Path(first[1]["run_dir"]) / "metrics.json").unlink()
    rows = run_tuner(tuner, gpus=[-1], echo=lambda _: None)
    assert [r["launched"] for r in rows] == [False, True, False, False]
    assert rows[1]["resumed"] and rows[1]["status"] == "finished"
    assert "--resume" in Path(rows[1]["log"]).read_text()


@pytest.mark.slow
def test_a_failing_experiment_is_recorded_and_the_others_finish(
    tiny_data: Path, tmp_path: Path
) -> None:
    base, model_root = make_base(tmp_path, tiny_data)
    # 5 heads do not divide the token width (2 x item width): the model raises when built.
    tuner = write_tuner(tmp_path, "heads", base, {"num_heads": [5, 2]})
    rows = run_tuner(tuner, gpus=[-1], max_parallel=2, echo=lambda _: None)
    assert [r["status"] for r in rows] == ["failed", "finished"]
    assert rows[0]["exit_code"] != 0 and rows[0]["valid_AUC"] is None
    assert "num_heads" in Path(rows[0]["log"]).read_text()
    _, records = read_csv(model_root / "heads.csv")
    assert [r["status"] for r in records] == ["failed", "finished"]
    assert records[0]["valid_AUC"] == "" and records[1]["valid_AUC"]


@pytest.mark.slow
def test_tuned_dataset_parameter_gets_its_own_dataset_block(
    tiny_data: Path, tmp_path: Path
) -> None:
    base, model_root = make_base(tmp_path, tiny_data)
    copies = []
    for name in ("valid_a.parquet", "valid_b.parquet"):
        shutil.copy(tiny_data / "valid.parquet", tmp_path / name)
        copies.append(str(tmp_path / name))
    tuner = write_tuner(tmp_path, "data", base, {"valid_data": copies})
    rows = run_tuner(tuner, gpus=[-1], max_parallel=2, echo=lambda _: None)
    assert [r["status"] for r in rows] == ["finished", "finished"]
    config_dir = tuner.parent / "data"
    for row, path, ds_id in zip(rows, copies, ["tiny_d001", "tiny_d002"]):
        cfg = load_config(config_dir, row["expid"])
        assert cfg.hash_check == HASH_OK
        assert (cfg.dataset.dataset_id, cfg.dataset.valid_data) == (ds_id, path)
        assert Path(row["run_dir"]) == model_root / ds_id / row["expid"]
    blocks = yaml.safe_load((config_dir / "dataset_config.yaml").read_text())
    assert list(blocks) == ["tiny_d001", "tiny_d002"]


def test_lists_in_the_tuner_dataset_block_are_axes_but_feature_cols_is_not(
    tiny_data: Path, tmp_path: Path
) -> None:
    base, _ = make_base(tmp_path, tiny_data)
    block = yaml.safe_load((base / "dataset_config.yaml").read_text())["tiny"]
    block["data_root"] = ["./a/", "./b/"]
    tuner = write_tuner(
        tmp_path, "roots", base, {"batch_size": [256, 512]}, dataset_config={"tiny": block}
    )
    config_dir, grid = expand_grid(tuner)
    assert [(p["batch_size"], p["data_root"], p["dataset_id"]) for _, p in grid] == [
        (256, "./a/", "tiny_d001"),
        (256, "./b/", "tiny_d002"),
        (512, "./a/", "tiny_d001"),
        (512, "./b/", "tiny_d002"),
    ]
    assert all(len(p["feature_cols"]) == 7 for _, p in grid)


def test_permuted_values_get_distinct_ids(tiny_data: Path, tmp_path: Path) -> None:
    base, _ = make_base(tmp_path, tiny_data)
    space = {"batch_size": [128, 256], "dim_feedforward": [256, 128]}
    tuner = write_tuner(tmp_path, "perm", base, space)
    _, grid = expand_grid(tuner)
    points = {(p["batch_size"], p["dim_feedforward"]): e for e, p in grid}
    assert len(points) == 4
    hashes = {parse_tuner_id(e)[2] for e in points.values()}
    assert len(hashes) == 4  # (128, 256) and (256, 128) differ in the hash, not only the index


def test_a_bad_key_fails_the_whole_tuner_before_anything_runs(
    tiny_data: Path, tmp_path: Path
) -> None:
    base, model_root = make_base(tmp_path, tiny_data)
    tuner = write_tuner(tmp_path, "bad", base, {"learning_rat": [1e-3, 5e-4]})
    with pytest.raises(ConfigError, match="learning_rat.*did you mean 'learning_rate'"):
        run_tuner(tuner, gpus=[-1], echo=lambda _: None)
    assert not (tuner.parent / "bad").exists()
    assert not model_root.exists()


def test_tuner_path_and_key_errors_name_the_tuner_file(tiny_data: Path, tmp_path: Path) -> None:
    base, _ = make_base(tmp_path, tiny_data)
    with pytest.raises(ConfigError, match="tuner file .* is a folder, not a file"):
        run_tuner(tmp_path, gpus=[-1], dry_run=True, echo=lambda _: None)
    gone = write_tuner(tmp_path, "gone", tmp_path / "no_such_dir", {"net_dropout": [0.1]})
    with pytest.raises(ConfigError, match=r"gone.yaml: base_config '.*no_such_dir' does not exist"):
        run_tuner(gone, gpus=[-1], dry_run=True, echo=lambda _: None)
    bad = write_tuner(tmp_path, "bad_val", base, {"net_dropout": [0.1, 1.5]})
    with pytest.raises(ConfigError, match=r"'net_dropout' \(from .*bad_val.yaml:tuner_space\)"):
        run_tuner(bad, gpus=[-1], dry_run=True, echo=lambda _: None)


def test_a_missing_gpu_fails_the_whole_tuner_before_anything_is_written(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from mmctr.utils import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base, model_root = make_base(tmp_path, tiny_data)
    tuner = write_tuner(tmp_path, "nogpu", base, {"learning_rate": [1e-3, 5e-4]})
    with pytest.raises(DeviceError, match="--gpu 0 was asked for but CUDA is not available"):
        run_tuner(tuner, gpus=[0], echo=lambda _: None)
    assert not (tuner.parent / "nogpu").exists()
    assert not model_root.exists()


def test_dry_run_writes_configs_and_runs_nothing(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, model_root = make_base(tmp_path, tiny_data)
    tuner = write_tuner(tmp_path, "dry", base, {"net_dropout": [0.0, 0.1]})
    assert tuner_main(["--config", str(tuner), "--gpu", "0", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    _, grid = expand_grid(tuner)
    for expid, _ in grid:
        assert expid in out
        assert load_config(tuner.parent / "dry", expid).hash_check == HASH_OK
    assert "nothing was run" in out
    assert not model_root.exists()


def test_a_duplicate_grid_point_runs_once(tiny_data: Path, tmp_path: Path) -> None:
    base, _ = make_base(tmp_path, tiny_data)
    tuner = write_tuner(tmp_path, "dup", base, {"learning_rate": [1.0e-3, 0.001, 2.0e-3]})
    said: list[str] = []
    rows = run_tuner(tuner, gpus=[-1], dry_run=True, echo=said.append)
    assert [parse_tuner_id(r["expid"])[1] for r in rows] == [1, 3]
    assert any("grid point 2/3" in s and "same experiment as" in s for s in said)


def test_a_grown_grid_reuses_runs_finished_under_another_number(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Adding a value renumbers the grid points; the hash still names each experiment."""
    base, model_root = make_base(tmp_path, tiny_data)
    tuner = write_tuner(tmp_path, "grow", base, {"net_dropout": [0.0, 0.1]})
    first = run_tuner(tuner, gpus=[-1], dry_run=True, echo=lambda _: None)
    for row in first:  # pretend both finished
        run_dir = Path(row["run_dir"])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text('{"valid": {"AUC": 0.6, "logloss": 0.5}}')
    tuner = write_tuner(tmp_path, "grow", base, {"net_dropout": [0.05, 0.0, 0.1]})
    said: list[str] = []
    rows = run_tuner(tuner, gpus=[-1], dry_run=True, echo=said.append)
    assert [r["status"] for r in rows] == ["skipped", "finished", "finished"]
    assert [Path(r["run_dir"]).name for r in rows[1:]] == [r["expid"] for r in first]
    assert [parse_tuner_id(r["expid"])[1] for r in rows] == [1, 2, 3]  # renumbered
    assert any("finished as" in s for s in said)
    cfg = load_config(tuner.parent / "grow", rows[0]["expid"])
    assert cfg.params["tuner"] == str(tuner) and cfg.hash_check == HASH_OK
