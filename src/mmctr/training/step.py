"""The trainer's optimizer step, as device work only: shared by the trainer, the CUDA-graph
step and the benchmarks, so that what is measured is what trains.

    step = TrainStep(model, optimizer, guard, device, bf16=..., max_gradient_norm=...)
    step.forward_backward(batch, weight, scale)   # per micro-batch
    step.optimizer_step()                         # per window (regularisers, clip, guard)
    step.whole(batch)                             # accumulation 1, one process: both

Loss: binary cross-entropy on the float logits, summed over the micro-batch and times
``weight``; its backward is scaled by ``scale`` (1 / rows of the window, times the world
size under torchrun, as DDP averages gradients over ranks).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmctr.config.schema import parse_regularizer
from mmctr.training.guard import DivergenceGuard


def autocast_ctx(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on ``device`` when ``enabled``. ``cache=False`` while recording a CUDA
    graph: autocast's cache of cast weights must not outlive the recording."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def clip_divisor(grad_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_``'s clipping as a divisor: the gradients times max_norm / (norm +
    1e-6) when that is below 1, else unchanged, is the gradients divided by this. A fused
    optimizer applies it inside its own kernel (its ``grad_scale``, the hook GradScaler
    uses), which saves clip_grad_norm_'s separate pass over every gradient (a 268M-parameter
    model's 1 GB of them, ~45 ms per step on 2 CPU cores)."""
    return torch.clamp((grad_norm.detach().float() + 1e-6) / max_norm, min=1.0)


class TrainStep:
    """Forward, backward, regularisers, clipping and the guarded optimizer step.

    ``net_model`` runs the forward (the DDP wrapper under torchrun; ``model`` otherwise);
    ``model`` owns the parameters that are clipped and regularised. The regularisers are
    FuxiCTR's, in its spellings (a number is L2; "l1(x)", "l2(x)", "l1_l2(x, y)"): a penalty
    lambda/p * ||W||_p^p once per step, ``embedding_regularizer`` on the feature embeddings
    (tables and projections) and ``net_regularizer`` on every other trainable parameter
    (:meth:`mmctr.models.base.CTRModel.regularization_groups`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        guard: DivergenceGuard,
        device: torch.device,
        *,
        bf16: bool = False,
        max_gradient_norm: float | None = None,
        embedding_regularizer: float | str | None = 0.0,
        net_regularizer: float | str | None = 0.0,
        net_model: nn.Module | None = None,
        autocast_cache: bool = True,
    ) -> None:
        self.model = model
        self.net_model = net_model if net_model is not None else model
        self.optimizer = optimizer
        self.guard = guard
        self.device = device
        self.bf16 = bf16
        self.max_gradient_norm = max_gradient_norm
        emb_params, net_params = model.regularization_groups()
        self.penalties = [  # (params, p, lambda)
            (params, p, lam)
            for params, reg in ((emb_params, embedding_regularizer), (net_params, net_regularizer))
            for p, lam in parse_regularizer(reg)
            if params
        ]
        self.autocast_cache = autocast_cache

    def forward_backward(
        self, batch: dict[str, torch.Tensor], weight: float, scale: float
    ) -> torch.Tensor:
        """One micro-batch; returns its summed BCE (times ``weight``), still on the device."""
        with autocast_ctx(self.device, self.bf16, cache=self.autocast_cache):
            logits = self.net_model(batch)
        bce = weight * nn.functional.binary_cross_entropy_with_logits(
            logits.float(), batch["label"], reduction="sum"
        )
        (bce * scale).backward()
        self.guard.add(bce)
        return bce

    def optimizer_step(self) -> None:
        """The window's regularisers, clipping and guarded optimizer step; zeroes the grads."""
        if self.penalties:
            reg = torch.zeros((), device=self.device)
            for params, p, lam in self.penalties:
                norm = (w.abs().sum() if p == 1 else w.pow(2).sum() for w in params)
                reg = reg + sum(norm, torch.zeros((), device=self.device)) * (lam / p)
            reg.backward()
        grad_norm = grad_scale = None
        if self.max_gradient_norm and self.max_gradient_norm > 0:
            if self.guard.on_device:  # the fused kernel divides the gradients itself
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                grad_norm = nn.utils.get_total_norm(grads)
                grad_scale = clip_divisor(grad_norm, self.max_gradient_norm)
            else:
                grad_norm = nn.utils.clip_grad_norm_(
                    self.model.parameters(), self.max_gradient_norm
                )
        # skipped if the loss or gradients are not finite
        self.guard.step(grad_norm, grad_scale=grad_scale)
        self.optimizer.zero_grad(set_to_none=True)

    def whole(self, batch: dict[str, torch.Tensor]) -> None:
        """accumulation_steps 1, one process: the batch is the window."""
        self.forward_backward(batch, 1.0, 1.0 / batch["label"].shape[0])
        self.optimizer_step()
