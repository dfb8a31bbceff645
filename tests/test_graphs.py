"""The CUDA-graph training step's plumbing, checked on the CPU with a stand-in for the graph.

The stand-in "records" by keeping the step function and "replays" by calling it again on the
static input tensors, so a run with it must equal an eager run exactly: that proves each
batch reaches the static inputs, partial batches run eagerly, and the learning rate is
re-recorded. The CUDA recording itself runs in scripts/gpu_check.py on a GPU.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from mmctr.config import load_config
from mmctr.models import base as model_base
from mmctr.training import graphs as graphs_mod
from mmctr.training import trainer as trainer_mod
from mmctr.training.graphs import GraphedStep
from mmctr.training.trainer import train

from .helpers import write_experiment


class ReplayByCalling:
    """CPU stand-in for CudaGraphAPI: recording keeps the function, a replay calls it."""

    def __init__(self) -> None:
        self.recorded = 0

    def side_stream(self):
        return contextlib.nullcontext()

    def record(self, fn):
        self.recorded += 1
        return fn


def _train(tmp_path, tiny_data, **params):
    cfg_dir, expid = write_experiment(tmp_path, tiny_data, **params)
    return train(load_config(cfg_dir, expid), gpu=-1, progress=False)


def test_graphed_training_equals_eager_training(tmp_path, tiny_data, monkeypatch):
    # the model's own CPU trimming reads the batch (a host wait): off in both runs; length
    # chunking (off under graphs) draws dropout masks per chunk, and the cross network's
    # row groups (off under graphs) round differently: off in both runs too
    monkeypatch.setattr(model_base, "trim_leading_padding", lambda seq, keep_at_least=1: seq)
    real_build = trainer_mod.build_model

    def build_unchunked(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.sequence.length_chunks = False
        model.cross.skip_zeros = False
        return model

    monkeypatch.setattr(trainer_mod, "build_model", build_unchunked)
    eager = _train(tmp_path / "eager", tiny_data, trim_padding=False, epochs=2)

    stand_ins = []

    def make_api():
        stand_ins.append(ReplayByCalling())
        return stand_ins[-1]

    monkeypatch.setattr(trainer_mod, "cuda_graphs_off_reason", lambda *a: None)
    monkeypatch.setattr(graphs_mod, "CudaGraphAPI", make_api)
    graphed = _train(tmp_path / "graphed", tiny_data, cuda_graphs=True, epochs=2)

    assert graphed["valid"] == eager["valid"] and graphed["test"] == eager["test"]
    assert [h["train_loss"] for h in graphed["history"]] == [
        h["train_loss"] for h in eager["history"]
    ]
    log = (tmp_path / "graphed" / "ckpt" / "tiny" / "tiny_exp" / "train.log").read_text()
    # 2000 rows / 256: 7 full batches + 1 of 208 per epoch; 3 warm-up steps, 1 recording
    assert stand_ins[0].recorded == 1
    assert "cuda_graphs: recorded the training step" in log
    assert "cuda_graphs on: 4 replays, 4 eager steps, 1 recordings" in log  # epoch 1
    assert "cuda_graphs on: 11 replays, 5 eager steps, 1 recordings" in log  # epoch 2


def test_cuda_graphs_on_a_cpu_is_off_with_the_reason(tmp_path, tiny_data):
    _train(tmp_path, tiny_data, cuda_graphs=True, epochs=1)
    log = (tmp_path / "ckpt" / "tiny" / "tiny_exp" / "train.log").read_text()
    assert "cuda_graphs: off, needs a CUDA device, this run is on cpu" in log


def _toy_step():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    seen = []

    def step(batch):
        seen.append(batch["x"].shape[0])
        loss = net(batch["x"]).pow(2).mean()
        loss.backward()
        opt.step()

    return net, opt, step, seen


def test_lr_change_records_again_and_other_shapes_run_eagerly():
    net, opt, step, seen = _toy_step()
    api = ReplayByCalling()
    graphed = GraphedStep(step, opt, torch.device("cpu"), warmup=2, graph_api=api)
    full = {"x": torch.randn(4, 3)}
    for _ in range(4):
        graphed(full)
    assert (graphed.eager_steps, graphed.replays, api.recorded) == (2, 2, 1)
    graphed({"x": torch.randn(2, 3)})  # another shape: eager
    assert (graphed.eager_steps, graphed.replays) == (3, 2)
    opt.param_groups[0]["lr"] = 0.01  # decay on plateau: the fused kernel baked 0.1 in
    graphed(full)
    assert api.recorded == 2 and graphed.recorded_lrs == [0.01]
    assert seen == [4, 4, 4, 4, 2, 4]


def test_a_partial_first_batch_does_not_set_the_recorded_shape():
    """A resume mid-epoch can start at the last, partial batch: with full_rows, the graph is
    still recorded for the full batches that follow."""
    net, opt, step, seen = _toy_step()
    api = ReplayByCalling()
    graphed = GraphedStep(step, opt, torch.device("cpu"), warmup=1, graph_api=api, full_rows=4)
    graphed({"x": torch.randn(2, 3)})  # the partial batch first: eager, not the signature
    for _ in range(3):
        graphed({"x": torch.randn(4, 3)})
    assert (graphed.eager_steps, graphed.replays, api.recorded) == (2, 2, 1)


def test_a_step_that_waits_for_the_device_runs_eagerly(caplog):
    net, opt, step, _ = _toy_step()

    def waiting_step(batch):
        step(batch)
        float(net.weight.detach().sum())  # a host wait: cannot be recorded

    api = ReplayByCalling()
    graphed = GraphedStep(waiting_step, opt, torch.device("cpu"), warmup=1, graph_api=api)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            graphed({"x": torch.randn(4, 3)})
    assert not graphed.enabled and api.recorded == 0 and graphed.eager_steps == 3
    assert "waits for the device" in caplog.text and "_local_scalar_dense" in caplog.text


@pytest.mark.parametrize("reason", ["accumulation", "optimizer"])
def test_cuda_graphs_off_reasons(reason):
    from mmctr.config.schema import TrainerConfig
    from mmctr.training.distributed import DistContext

    t = TrainerConfig(
        accumulation_steps=2 if reason == "accumulation" else 1,
        optimizer="adagrad" if reason == "optimizer" else "adam",
    )
    off = trainer_mod.cuda_graphs_off_reason(t, torch.device("cuda", 0), DistContext())
    assert ("accumulation_steps" in off) if reason == "accumulation" else ("fused" in off)
    assert "torchrun" in trainer_mod.cuda_graphs_off_reason(
        TrainerConfig(), torch.device("cuda", 0), DistContext(rank=0, world_size=2)
    )
    assert (
        trainer_mod.cuda_graphs_off_reason(TrainerConfig(), torch.device("cuda", 0), DistContext())
        is None
    )


def test_a_failed_recording_falls_back_to_eager_steps(caplog):
    net, opt, step, seen = _toy_step()

    class Refuses(ReplayByCalling):
        def record(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedStep(step, opt, torch.device("cpu"), warmup=1, graph_api=Refuses())
    with caplog.at_level("WARNING"):
        for _ in range(3):
            graphed({"x": torch.randn(4, 3)})
    assert not graphed.enabled and graphed.eager_steps == 3 and seen == [4, 4, 4]
    assert "recording failed" in caplog.text
