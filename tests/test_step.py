"""The trainer's step (TrainStep): the regularisers reach exactly the parameters FuxiCTR's do."""

from __future__ import annotations

import pytest
import torch

from mmctr.training.guard import DivergenceGuard, skips_on_device
from mmctr.training.step import TrainStep
from mmctr.training.trainer import make_optimizer

from .test_models import _batch, _tdcn


def _one_step(
    emb_reg=0.0,
    net_reg=0.0,
    *,
    optimizer="sgd",
    lr=1.0,
    max_gradient_norm=None,
    sync_every_step=False,
):
    """One TrainStep on a fixed batch, dropout off -> (model, optimizer, weights before)."""
    model = _tdcn().train()
    model.sequence.length_chunks = False
    for m in model.modules():  # deterministic forward: no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    opt = make_optimizer(optimizer, model.parameters(), lr=lr, weight_decay=0.0)
    guard = DivergenceGuard(opt, torch.device("cpu"), sync_every_step=sync_every_step)
    step = TrainStep(
        model,
        opt,
        guard,
        torch.device("cpu"),
        embedding_regularizer=emb_reg,
        net_regularizer=net_reg,
        max_gradient_norm=max_gradient_norm,
    )
    batch = _batch(6)
    batch["label"] = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step.whole(batch)
    return model, opt, before


def _step_delta(emb_reg, net_reg):
    model, _, before = _one_step(emb_reg, net_reg)
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


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad"])
@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clipping_inside_the_fused_kernel_equals_clip_grad_norm(optimizer, max_norm):
    """Fused optimizers get the clipping as their kernel's grad_scale (no separate pass over
    the gradients): the same update as clip_grad_norm_ then step(), when clipping bites
    (0.05) and when it does not (1e6: bit for bit); others still call clip_grad_norm_."""
    results = []
    for fold in (True, False):
        model, opt, _ = _one_step(
            optimizer=optimizer, lr=0.01, max_gradient_norm=max_norm, sync_every_step=not fold
        )  # one step: later ones would amplify last-bit differences
        assert not hasattr(opt, "grad_scale")
        results.append([p.detach().clone() for p in model.parameters()])
    for folded, plain in zip(*results):
        if max_norm > 1e3 or optimizer == "adagrad":  # not clipped / not fused: one path
            assert torch.equal(folded, plain)
        else:
            torch.testing.assert_close(folded, plain, rtol=1e-5, atol=1e-8)


def test_a_clipped_step_really_clips():
    """SGD, lr 1: the update is the clipped gradient, whose norm is max_norm."""
    model, opt, before = _one_step(max_gradient_norm=1e-3)
    assert skips_on_device(opt)  # the clipping inside the fused kernel
    update = [(before[n] - p.detach()).flatten() for n, p in model.named_parameters()]
    assert float(torch.cat(update).norm()) == pytest.approx(1e-3, rel=1e-3)
