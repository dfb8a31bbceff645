"""One CUDA graph of the whole training step, replayed for every full batch (``cuda_graphs``).

A training step of the seed config launches several hundred small kernels. On a fast GPU the
host cannot queue them as fast as the device runs them, so the device waits for Python. A
CUDA graph records the step's kernels once (forward, backward, clipping, the guarded fused
optimizer step) and replays them with one launch. What that needs, and how it is met here:

- static shapes: the loader keeps every batch at the file's history width (no trimming,
  masked padding gives the same result) and full batches replay the graph; a batch of
  another shape (the last, partial batch of an epoch) runs the same step eagerly;
- no host waits inside the step: the NaN guard and the running loss live on the device
  (:mod:`mmctr.training.guard`); one eager warm-up step is checked with
  :class:`~mmctr.training.guard.HostWaits` and graphs are turned off (with a log line) if the
  model needs any (for example the sequence encoder's length chunking, turned off here);
- static inputs: each batch is copied into the tensors the graph was recorded with;
- numbers the kernels were recorded with: the learning rate is baked into the fused
  optimizer kernel, so a change (decay on plateau) records the graph again.

A recording that raises also turns graphs off and the run goes on eagerly, with the reason
in the log. The gradients of a replay live in the graph's private memory. Eager steps start from
``grad=None``, so they never add to them. Only one process (no torchrun) and
``accumulation_steps: 1``; the trainer checks that before building one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch

from mmctr.training.guard import HostWaits

Batch = dict[str, torch.Tensor]


def configure_for_graphs(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, on: bool
) -> None:
    """Set up a model and its optimizer for a recorded step (``on``) or an eager one.

    Adam/AdamW's ``capturable`` flag follows ``on`` (it is cleared too, as a resumed optimizer
    state may carry it). When on, the sequence encoder's length chunking and the cross
    network's grouping of rows by padding go off: both are data that the host would read.
    """
    for g in optimizer.param_groups:
        if "capturable" in g:
            g["capturable"] = on
    if on and hasattr(model, "sequence"):
        model.sequence.length_chunks = False
    if on and hasattr(model, "cross"):
        model.cross.skip_zeros = False


class CudaGraphAPI:
    """The two CUDA calls :class:`GraphedStep` makes (a test substitutes a CPU stand-in)."""

    @contextlib.contextmanager
    def side_stream(self) -> Iterator[None]:
        """Run the block on a side stream, ordered after and before the current one."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)

    def record(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Record ``fn``'s kernels (without running them) -> the graph's replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay  # the bound method keeps the graph alive


class GraphedStep:
    """Runs ``step_fn(batch)`` (one whole optimizer step, no host waits) for each batch: as a
    replayed CUDA graph when the batch has the recorded shapes, else eagerly.

    ``warmup`` eager steps run first (on a side stream, as CUDA graph capture asks: they
    initialise the optimizer state and the libraries' workspaces); the next full batch is
    recorded. ``graph_api``: a :class:`CudaGraphAPI`; tests pass a stand-in that replays by
    calling the step again, to check the plumbing on a CPU.
    """

    def __init__(
        self,
        step_fn: Callable[[Batch], None],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        *,
        warmup: int = 3,
        log: logging.Logger | None = None,
        graph_api=None,
        full_rows: int | None = None,
    ) -> None:
        self.step_fn = step_fn
        self.full_rows = full_rows  # only batches of this many rows are recorded (None: any)
        self.optimizer = optimizer
        self.device = device
        self.warmup_left = warmup
        self.log = log or logging.getLogger(__name__)
        self.api = graph_api if graph_api is not None else CudaGraphAPI()
        self.enabled = True
        self.off_reason = ""
        self.replay: Callable[[], None] | None = None
        self.static: Batch | None = None
        self.signature: dict[str, tuple] | None = None
        self.recorded_lrs: list[float] | None = None
        self.replays = self.eager_steps = self.recordings = 0

    @staticmethod
    def _signature(batch: Batch) -> dict[str, tuple]:
        return {k: (tuple(v.shape), v.dtype) for k, v in batch.items()}

    def _lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def __call__(self, batch: Batch) -> None:
        if not self.enabled:
            return self._eager(batch)
        rows = next(iter(batch.values())).shape[0] if batch else 0
        if self.full_rows is not None and rows != self.full_rows:
            return self._eager(batch)  # a partial batch (e.g. the first one after a resume)
        if self.warmup_left > 0:
            self.warmup_left -= 1
            if self.signature is None:
                self.signature = self._signature(batch)
                if not self._step_is_wait_free(batch):
                    return None
            else:
                self._eager(batch, side_stream=True)
            return None
        if self._signature(batch) != self.signature:
            return self._eager(batch)  # e.g. the last, partial batch of an epoch
        if self.replay is None or self._lrs() != self.recorded_lrs:
            try:
                self._record(batch)
            except RuntimeError as exc:  # e.g. an op CUDA cannot record: train on, eagerly
                self.enabled, self.replay = False, None
                self.off_reason = f"recording failed: {exc}"
                self.log.warning("cuda_graphs: recording failed (%s); running eagerly", exc)
                return self._eager(batch)
        for k, v in batch.items():
            self.static[k].copy_(v, non_blocking=True)
        self.replay()
        self.replays += 1
        return None

    def _eager(self, batch: Batch, side_stream: bool = False) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # never add to a replay's gradients
        with self.api.side_stream() if side_stream else contextlib.nullcontext():
            self.step_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1

    def _step_is_wait_free(self, batch: Batch) -> bool:
        with HostWaits(self.device) as waits:
            self._eager(batch)
        if waits.total:
            self.enabled = False
            self.off_reason = f"the step waits for the device: {dict(waits.ops)}"
            self.log.warning(
                "cuda_graphs: the training step waits for the device (%s); running eagerly",
                dict(waits.ops),
            )
        return not waits.total

    def _record(self, batch: Batch) -> None:
        self.static = {k: v.clone() for k, v in batch.items()}
        self.replay = None  # frees the previous recording first
        self.optimizer.zero_grad(set_to_none=True)  # gradients come from the graph's pool
        static = self.static
        self.replay = self.api.record(lambda: self.step_fn(static))
        self.recorded_lrs = self._lrs()
        self.recordings += 1
        self.log.info(
            "cuda_graphs: recorded the training step (batch %s, lr %s; recording %d)",
            {k: tuple(v.shape) for k, v in batch.items() if v.dim() > 1},
            self.recorded_lrs,
            self.recordings,
        )

    def summary(self) -> str:
        state = "on" if self.enabled else f"off ({self.off_reason})"
        return (
            f"cuda_graphs {state}: {self.replays} replays, {self.eager_steps} eager steps, "
            f"{self.recordings} recordings"
        )
