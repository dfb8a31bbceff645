"""CPU threads: the num_threads key / --threads, the default, the busy-machine warning."""

from __future__ import annotations

import pytest
import torch

from mmctr import threads
from mmctr.cli.common import overrides_of
from mmctr.cli.run_expid import build_parser
from mmctr.config import RUN_ENVIRONMENT_KEYS, load_config
from mmctr.config.loader import ConfigError
from mmctr.training.trainer import train

from .helpers import write_experiment


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_explicit_then_omp_then_default(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_num_threads(2) == (2, "num_threads / --threads")
    assert threads.choose_num_threads(None) == (None, "OMP_NUM_THREADS=3")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "physical_cores_available", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.1: 0.1)
    n, why = threads.choose_num_threads(None)
    assert n == 8 and "8 physical core(s)" in why
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.1: 5.2)
    assert threads.choose_num_threads(None)[0] == 3  # the cores other work leaves free
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.1: 30.0)
    assert threads.choose_num_threads(None)[0] == 1  # at least one


def test_default_is_divided_among_parallel_runs(monkeypatch):
    assert 1 <= threads.physical_cores_available() <= len(threads.cpus_available())
    monkeypatch.setattr(threads, "physical_cores_available", lambda: 8)
    assert [threads.default_num_threads(k) for k in (1, 2, 3, 16)] == [8, 4, 2, 1]


def test_busy_warning_names_the_remedy(monkeypatch):
    monkeypatch.setattr(threads, "cpus_available", lambda: [0, 1])
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.5, 4.0, 3.0))
    warning = threads.busy_warning(2)
    assert "load average 5.5 on 2 core(s)" in warning and "--threads 1" in warning
    one = threads.busy_warning(1)  # one thread already: fewer threads is no remedy
    assert "one thread shares a core" in one and "--threads" not in one
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert threads.busy_warning(2) is None


def test_run_logs_its_threads_and_the_key_is_validated(tmp_path, tiny_data, keep_threads):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, epochs=1, num_threads=1)
    train(load_config(cfg_dir, expid), gpu=-1, progress=False)
    assert torch.get_num_threads() == 1
    log = (tmp_path / "ckpt" / "tiny" / "tiny_exp" / "train.log").read_text()
    assert "threads: 1 (num_threads / --threads" in log
    with pytest.raises(ConfigError, match="num_threads"):
        load_config(cfg_dir, expid, overrides=["num_threads=0"])
    args = build_parser().parse_args(["--config", "c", "--expid", "e", "--threads", "2"])
    assert overrides_of(args) == ["num_threads=2"]
    # run-environment keys: the expid's hash and a resume do not depend on them
    assert {"num_threads", "tensorboard"} <= RUN_ENVIRONMENT_KEYS
