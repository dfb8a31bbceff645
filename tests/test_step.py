"""The trainer's step (TrainStep): the regularisers reach exactly the parameters FuxiCTR's do."""

from __future__ import annotations

import torch

from mmctr.training.guard import DivergenceGuard
from mmctr.training.step import TrainStep
from mmctr.training.trainer import make_optimizer

from .test_models import _batch, _tdcn


def _step_delta(emb_reg, net_reg):
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


def _check_extra_gradients(emb_reg, net_reg, emb_extra, net_extra):
    """SGD with lr 1: the update is the gradient, and lambda/p * ||W||_p^p adds
    lambda * sign(W) (p = 1) or lambda * W (p = 2) to it."""
    model, plain, before = _step_delta(0.0, 0.0)
    _, regd, _ = _step_delta(emb_reg, net_reg)
    emb, net = model.regularization_groups()
    emb_ids = {id(p) for p in emb}
    names = dict(model.named_parameters())
    assert len(emb) + len(net) == len(names)  # every parameter is in one group
    assert {id(p) for p in net}.isdisjoint(emb_ids)
    for name, p in names.items():
        extra = regd[name] - plain[name]
        expected = (emb_extra if id(p) in emb_ids else net_extra)(before[name])
        torch.testing.assert_close(extra, expected, rtol=1e-4, atol=1e-5, msg=name)
    emb_names = {n for n, p in names.items() if id(p) in emb_ids}
    # FuxiCTR's split: the feature embeddings (tables and the item_emb_d128 projection) ...
    assert any("projections" in n for n in emb_names) and any(
        "side_encoder" in n for n in emb_names
    )
    # ... and everything else, biases and the attention's in_proj included
    assert any(n.endswith("bias") for n in names if n not in emb_names)
    assert any("in_proj_weight" in n for n in names if n not in emb_names)


def test_regularisers_reach_the_parameters_fuxictr_regularises():
    _check_extra_gradients(0.1, 0.01, lambda w: 0.1 * w, lambda w: 0.01 * w)


def test_fuxictr_regulariser_strings_l1_l2_and_l1_l2():
    _check_extra_gradients(
        "l1(0.01)",
        "l1_l2(0.02, 0.1)",
        lambda w: 0.01 * w.sign(),
        lambda w: 0.02 * w.sign() + 0.1 * w,
    )
    _check_extra_gradients("l2(1.e-1)", "", lambda w: 0.1 * w, torch.zeros_like)
