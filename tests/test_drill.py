"""The drill's own pieces: torn-file detection, named write failures, a few corpus cases.

(``make drill`` runs the whole drill; these keep its parts honest inside ``make test``.)"""

from __future__ import annotations

import errno
import io
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmctr import atomic as utils  # the atomic writes (mmctr.utils re-exports them)
from mmctr.cli.common import describe_user_error
from mmctr.drill import corpus
from mmctr.drill.workspace import incomplete, make_workspace, torn_files


def _whole_files(tmp_path):
    pq.write_table(pa.table({"a": list(range(1000))}), tmp_path / "t.parquet")
    (tmp_path / "p.csv").write_text("ID,Task2\n0,0.5\n1,0.25\n")
    with zipfile.ZipFile(tmp_path / "s.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("prediction.csv", "ID,Task2\n" + "0,0.5\n" * 500)
    np.savez(tmp_path / "x.npz", a=np.arange(5000.0))
    utils.atomic_torch_save({"format": "mmctr.last/1", "w": torch.ones(2000)}, tmp_path / "l.pt")
    return sorted(tmp_path.iterdir())


def test_torn_files_are_found_and_whole_ones_pass(tmp_path):
    files = _whole_files(tmp_path)
    assert torn_files(tmp_path) == []
    for path in files:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        assert incomplete(path), path
        path.write_bytes(data)
    (tmp_path / ".t.parquet.abc.tmp").write_bytes(b"half")  # a temp file is not an output
    assert torn_files(tmp_path) == []


def test_a_full_disk_is_an_output_error_naming_the_file(tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(
        utils, "open", lambda p, m, **kw: Full() if "w" in m else real_open(p, m), raising=False
    )
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    for save in (lambda: utils.atomic_torch_save({"w": torch.ones(10)}, path),
                 lambda: utils.atomic_write_text(path, "new")):  # fmt: skip
        with pytest.raises(utils.OutputError) as err:
            save()
        assert str(path) in describe_user_error(err.value) and "No space" in str(err.value)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize(
    "name",
    ["yaml: repeated key", "parquet: train no rows", "cli: predict --out under a file"],
)
def test_corpus_cases_fixed_by_the_drill_stay_fixed(tmp_path, name):
    cases = {c.name: c for c in corpus.all_cases()}
    base = make_workspace(tmp_path / "base", epochs=1)
    if cases[name].command == "predict":
        from mmctr.config import load_config
        from mmctr.training.trainer import train

        train(load_config(base.config, "drill_tiny"), gpu=-1, progress=False)
    outcome = corpus.run_case(cases[name], base, tmp_path / "case")
    assert outcome.ok, outcome
