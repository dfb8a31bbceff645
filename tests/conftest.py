"""Shared fixtures: the tiny MicroLens-shaped dataset, generated once per test session.

``tiny_data``            Path of a folder with the ``tiny`` preset (seed 2025, with images):
                         train/valid/test/item_info/oracle parquet, item_images/,
                         item_images_manifest.csv. 2,000 / 500 / 500 rows, 300 items.
                         Shared by every test: treat it as READ-ONLY (use ``tiny_data_copy``
                         to modify files).
``tiny_dataset_config``  ``microlens_dataset_config(tiny_data, dataset_id="tiny")`` (a fresh
                         DatasetConfig per test).
``tiny_data_copy``       a private, writable copy of ``tiny_data`` in the test's tmp_path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mmctr.config.schema import DatasetConfig
from mmctr.data.contract import microlens_dataset_config
from mmctr.data.demo import generate
from mmctr.runtime import flush_denormals

TINY_SEED = 2025

# A CPU run without num_threads picks its threads from how busy the machine is
# (mmctr/threads.py), and the thread count can change a result's last bits: tests that compare
# two runs exactly must not depend on the load. With OMP_NUM_THREADS set, runs keep torch's
# threads as they are in this process; subprocesses (run_expid.py, torchrun) take one thread
# each, as torchrun would give them, so that several of them never oversubscribe the cores.
# tests/test_threads.py tests the default itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# As the entry points do (train(), prediction, embedding): denormals are flushed before torch
# starts its thread pool, so that the tests that build and run models without train() compute
# as these entry points do.
flush_denormals()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_data")
    generate(out, preset="tiny", seed=TINY_SEED, images=True)
    return out


@pytest.fixture
def tiny_dataset_config(tiny_data: Path) -> DatasetConfig:
    return microlens_dataset_config(tiny_data, dataset_id="tiny")


@pytest.fixture
def tiny_data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "tiny_data"
    shutil.copytree(tiny_data, dst)
    return dst
