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

from mmctr.training.guard import DivergenceGuard


def autocast_ctx(device: torch.device, enabled: bool, cache: bool = True):
    """bf16 autocast on ``device`` when ``enabled``. ``cache=False`` while recording a CUDA
    graph: autocast's cache of cast weights must not outlive the recording."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


class TrainStep:
    """Forward, backward, regularisers, clipping and the guarded optimizer step.

    ``net_model`` runs the forward (the DDP wrapper under torchrun; ``model`` otherwise);
    ``model`` owns the parameters that are clipped and regularised (FuxiCTR: reg/2 * ||W||^2
    on the embedding tables and on the other weight matrices, once per step).
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
        embedding_regularizer: float = 0.0,
        net_regularizer: float = 0.0,
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
        self.emb_reg, self.net_reg = embedding_regularizer, net_regularizer
        self.emb_params, self.net_params = model.regularization_groups()
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
        if self.emb_reg or self.net_reg:
            zero = torch.zeros((), device=self.device)
            reg = sum((p.pow(2).sum() for p in self.emb_params), zero) * (self.emb_reg / 2)
            reg = reg + sum((p.pow(2).sum() for p in self.net_params), zero) * (self.net_reg / 2)
            reg.backward()
        grad_norm = None
        if self.max_gradient_norm and self.max_gradient_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.max_gradient_norm)
        self.guard.step(grad_norm)  # skipped if the loss or gradients are not finite
        self.optimizer.zero_grad(set_to_none=True)

    def whole(self, batch: dict[str, torch.Tensor]) -> None:
        """accumulation_steps 1, one process: the batch is the window."""
        self.forward_backward(batch, 1.0, 1.0 / batch["label"].shape[0])
        self.optimizer_step()
