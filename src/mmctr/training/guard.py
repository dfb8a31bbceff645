"""The NaN guard and the running loss, kept on the device so a training step never waits for it.

Reading a loss value (``float(loss)``) makes the host wait until the device has computed it.
On a GPU that wait, once per step, stops the host from queueing the next step's kernels while
the device works: the two take turns instead of overlapping. The guard avoids it:

- every micro-batch adds its summed loss to a device tensor and ORs a device flag when the
  loss is not finite; the gradient norm (from clipping, when on) is checked the same way;
- the optimizers with a fused kernel (adam, adamw, sgd) take that flag as ``found_inf``, the
  hook ``torch.amp.GradScaler`` uses: the kernel itself skips the update (and the step count)
  when the flag is set, so no weight ever holds a NaN, without the host looking at it;
- other optimizers read the flag on the host and skip a flagged step (one wait per step);
- the host reads the loss and the number of the first skipped step only in
  :meth:`DivergenceGuard.read`, which the trainer calls every few steps, before every
  evaluation and at the end of an epoch, and stops there: a diverged run never evaluates or
  writes a checkpoint after its first bad step.

Under torchrun the flag is summed over the ranks before the optimizer step (a collective on
the device, no host wait), so every rank skips the same steps and stops together.

:class:`HostWaits` counts the ops in a block that would make the host wait for a GPU; the
tests use it to prove a training step has none, and the benchmarks report it per step.
"""

from __future__ import annotations

import collections

import torch
import torch.distributed as torch_dist
from torch.utils._python_dispatch import TorchDispatchMode

FUSED_FOUND_INF = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when ``optimizer``'s fused kernel honours ``found_inf`` (skips flagged steps)."""
    return isinstance(optimizer, FUSED_FOUND_INF) and all(
        g.get("fused") for g in optimizer.param_groups
    )


class DivergenceGuard:
    """Running loss and the non-finite check of the training loop, on ``device``.

    Per micro-batch: :meth:`add` (its summed BCE, on the device) and :meth:`count` (its
    samples, on the host). Per optimizer step: :meth:`step` (instead of ``optimizer.step()``).
    Every so often: :meth:`read`. ``add`` and ``step`` are device work only, so they can be
    recorded in a CUDA graph (:mod:`mmctr.training.graphs`); steps are numbered on the device
    from ``first_step`` (the trainer's step count when it starts or resumes).
    ``sync_every_step`` reads the flag on the host before every step, as a non-fused
    optimizer needs anyway (kept for side-by-side benchmarks). Either way a flagged step is
    skipped: the weights and the optimizer state stay as they were.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        distributed: bool = False,
        sync_every_step: bool = False,
        first_step: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.device = device
        self.distributed = distributed
        self.on_device = skips_on_device(optimizer) and not sync_every_step
        self._bad = torch.zeros((), dtype=torch.float32, device=device)  # this window
        self._first_bad = torch.full((), -1, dtype=torch.float64, device=device)
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._step = torch.full((), float(first_step), dtype=torch.float64, device=device)
        self.rows = 0  # samples counted since the last reset (host count, no wait)
        # the last step's gradient norm (when clipping computes one), read with the loss
        self._grad_norm = torch.full((), float("nan"), dtype=torch.float64, device=device)
        self.grad_norm: float | None = None  # as of the last read()

    def reset_loss(self) -> None:
        self._loss_sum.zero_()
        self.rows = 0

    def restore(self, loss_sum: float, rows: int) -> None:
        """Continue an epoch's running loss from a checkpoint taken mid-epoch."""
        self._loss_sum.fill_(float(loss_sum))
        self.rows = int(rows)

    def add(self, loss_sum: torch.Tensor) -> None:
        """One micro-batch's summed loss (device work only)."""
        loss_sum = loss_sum.detach()
        self._loss_sum += loss_sum.double()
        self._bad.logical_or_(~torch.isfinite(loss_sum))

    def count(self, rows: int) -> None:
        """One micro-batch's number of samples (host only)."""
        self.rows += rows

    def step(
        self, grad_norm: torch.Tensor | None = None, grad_scale: torch.Tensor | None = None
    ) -> None:
        """The optimizer step of the window, skipped if its loss or gradients are not
        finite. ``grad_norm``: the gradients' norm (clipping), if any. ``grad_scale``: a
        divisor of every gradient that the fused kernel applies (:attr:`on_device` only; the
        clipping of :func:`mmctr.training.step.clip_divisor`)."""
        if grad_scale is not None and not self.on_device:
            raise ValueError("grad_scale needs a fused optimizer that skips on the device")
        if grad_norm is not None:
            self._bad.logical_or_(~torch.isfinite(grad_norm.detach()))
            self._grad_norm.copy_(grad_norm.detach())
        if self.distributed:
            torch_dist.all_reduce(self._bad)  # every rank skips the same steps
            self._bad.clamp_(max=1.0)
        first = torch.where(self._first_bad < 0, self._step, self._first_bad)
        self._first_bad.copy_(torch.where(self._bad > 0, first, self._first_bad))
        self._step += 1
        if self.on_device:
            self.optimizer.found_inf = self._bad  # read by the fused kernel
            if grad_scale is not None:
                self.optimizer.grad_scale = grad_scale  # the kernel divides the gradients
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
                if grad_scale is not None:
                    del self.optimizer.grad_scale
        elif not bool(self._bad):  # host wait
            self.optimizer.step()
        self._bad.zero_()

    def read(self) -> tuple[float, int, int | None]:
        """(summed loss, samples) since the last :meth:`reset_loss`, and the number of the
        first skipped step so far (counted from 0, like the trainer's steps), or None. One
        host wait; it also sets :attr:`grad_norm` (the last step's, None when not computed)."""
        loss_sum, first_bad, norm = torch.stack(
            [self._loss_sum, self._first_bad, self._grad_norm]
        ).tolist()
        self.grad_norm = norm if norm == norm else None
        return loss_sum, self.rows, (int(first_bad) if first_bad >= 0 else None)


#: aten ops whose result the host must wait for when their input is on an accelerator
HOST_WAIT_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "masked_select",
    }
)


class HostWaits(TorchDispatchMode):
    """Counts, inside the block, the ops in :data:`HOST_WAIT_OPS` that touch a tensor on
    ``device`` (all devices when None): the points where a GPU step would stall the host."""

    def __init__(self, device: torch.device | None = None) -> None:
        super().__init__()
        self.device = device
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_WAIT_OPS and (self.device is None or self._touches(args)):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    def _touches(self, args) -> bool:
        return any(isinstance(a, torch.Tensor) and a.device.type == self.device.type for a in args)

    @property
    def total(self) -> int:
        return sum(self.ops.values())
