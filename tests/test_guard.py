"""The on-device NaN guard: flagged steps are skipped, the host learns of them, no host waits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmctr.models import base as model_base
from mmctr.training.guard import DivergenceGuard, HostWaits, skips_on_device
from mmctr.training.trainer import make_optimizer

from .test_models import _batch, _tdcn


def _toy(optimizer: str):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = make_optimizer(optimizer, net.parameters(), lr=0.1, weight_decay=0.0)
    return net, opt


def _one_step(net, guard, poison=False, clip=None):
    x = torch.randn(16, 4)
    y = torch.randint(0, 2, (16,)).float()
    logits = net(x).squeeze(-1)
    if poison:
        logits = logits * float("nan")
    bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    (bce / 16).backward()
    guard.add(bce)
    guard.count(16)
    norm = nn.utils.clip_grad_norm_(net.parameters(), clip) if clip else None
    guard.step(norm)
    guard.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad", "rmsprop"])
def test_a_non_finite_step_is_skipped_and_reported(optimizer):
    net, opt = _toy(optimizer)
    guard = DivergenceGuard(opt, torch.device("cpu"))
    assert guard.on_device == (optimizer in ("adam", "adamw", "sgd"))
    _one_step(net, guard)
    assert guard.read()[2] is None
    before = copy.deepcopy((net.state_dict(), opt.state_dict()))
    _one_step(net, guard, poison=True, clip=10.0)
    after = (net.state_dict(), opt.state_dict())
    # the weights and the optimizer state (Adam's moments and step count) are untouched
    for k, v in before[0].items():
        assert torch.equal(v, after[0][k]), k
    for pid, st in before[1]["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(after[1]["state"][pid][k]))
    assert torch.isfinite(torch.cat([p.flatten() for p in net.parameters()])).all()
    loss_sum, rows, first_bad = guard.read()
    assert first_bad == 1 and rows == 32 and loss_sum != loss_sum  # nan
    # later good steps train again, and the first bad step stays reported
    _one_step(net, guard)
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in before[0].items())
    assert guard.read()[2] == 1


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped():
    net, opt = _toy("adam")
    guard = DivergenceGuard(opt, torch.device("cpu"))
    _one_step(net, guard)
    before = copy.deepcopy(net.state_dict())
    net[0].weight.register_hook(lambda g: g * float("inf"))
    _one_step(net, guard, clip=10.0)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    loss_sum, _, first_bad = guard.read()
    assert first_bad == 1 and loss_sum == loss_sum  # the loss itself was finite


def test_the_fused_path_is_what_the_trainer_gets():
    net, opt = _toy("adam")
    assert skips_on_device(opt)
    assert not DivergenceGuard(opt, torch.device("cpu"), sync_every_step=True).on_device
    plain = torch.optim.Adam(net.parameters(), lr=0.1)  # not fused: host check
    assert not skips_on_device(plain)


def test_a_training_step_never_waits_for_the_device(monkeypatch):
    """The whole step (forward, backward, clip, guarded Adam) dispatches no op whose value the
    host needs, once the history arrives trimmed: on a GPU nothing stalls the queue. The CPU
    model's own trimming (free there, off on accelerators) is patched out to see the rest."""
    model = _tdcn().train()
    model.sequence.length_chunks = False  # the CUDA bf16 default (chunking waits, by design)
    model.cross.skip_zeros = False  # the default off the CPU (grouping rows reads lengths)
    opt = make_optimizer("adam", model.parameters(), 1e-3, 0.0)
    guard = DivergenceGuard(opt, torch.device("cpu"))
    assert guard.on_device  # fused Adam skips flagged steps itself
    batch = _batch(6)
    batch["label"] = torch.randint(0, 2, (6,)).float()
    monkeypatch.setattr(model_base, "trim_leading_padding", lambda seq, keep_at_least=1: seq)

    def step():
        bce = nn.functional.binary_cross_entropy_with_logits(
            model(batch).float(), batch["label"], reduction="sum"
        )
        (bce / 6).backward()
        guard.add(bce)
        guard.step(nn.utils.clip_grad_norm_(model.parameters(), 10.0))
        opt.zero_grad(set_to_none=True)

    step()  # optimizer state initialised outside the counted step
    waits = HostWaits()
    with waits:
        step()
    assert waits.total == 0, f"host waits in a training step: {dict(waits.ops)}"
    with HostWaits() as trimmed:  # what the counter catches: the CPU model's trimming
        monkeypatch.undo()
        step()
    assert trimmed.ops == {"_local_scalar_dense": 1}
    assert guard.read()[2] is None
