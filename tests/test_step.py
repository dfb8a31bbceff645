"""The trainer's step (TrainStep): the regularisers reach exactly the parameters FuxiCTR's do."""

from __future__ import annotations

import torch

from mmctr.training.guard import DivergenceGuard
from mmctr.training.step import TrainStep
from mmctr.training.trainer import make_optimizer

from .test_models import _batch, _tdcn


def _step_delta(emb_reg: float, net_reg: float):
    model = _tdcn().train()
    model.sequence.length_chunks = False
    for m in model.modules():  # deterministic forward: no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = make_optimizer("sgd", model.parameters(), lr=1.0, weight_decay=0.0)
    guard = DivergenceGuard(opt, torch.device("cpu"))
    step = TrainStep(
        model,
        opt,
        guard,
        torch.device("cpu"),
        embedding_regularizer=emb_reg,
        net_regularizer=net_reg,
    )
    batch = _batch(6)
    batch["label"] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step.whole(batch)
    return model, {n: before[n] - p.detach() for n, p in model.named_parameters()}, before


def test_regularisers_add_reg_times_weight_to_the_right_gradients():
    model, plain, before = _step_delta(0.0, 0.0)
    _, regd, _ = _step_delta(0.1, 0.01)
    emb, net = model.regularization_groups()
    emb_ids = {id(p) for p in emb}
    net_ids = {id(p) for p in net}
    saw = {"emb": 0, "net": 0, "other": 0}
    for name, p in model.named_parameters():
        # SGD with lr 1: the update is the gradient; reg/2 * ||W||^2 adds reg * W to it
        extra = regd[name] - plain[name]
        if id(p) in emb_ids:
            expected, key = 0.1 * before[name], "emb"
        elif id(p) in net_ids:
            expected, key = 0.01 * before[name], "net"
        else:
            expected, key = torch.zeros_like(extra), "other"
        torch.testing.assert_close(extra, expected, rtol=1e-4, atol=1e-5, msg=name)
        saw[key] += 1
    assert all(saw.values()), saw  # embeddings, weight matrices and unregularised biases
