"""Batches by vectorised indexing: no per-sample Python anywhere on the hot path.

Training: one seeded permutation per epoch (``seed`` and ``epoch`` decide it, so two runs
with the same seed see identical batches and every epoch differs). Evaluation/prediction:
contiguous slices in file order, so the i-th prediction is the i-th row of the file.

Padding trimming: histories are left-padded, so the leading columns that are padding in every
row of a batch carry no information. They are dropped per batch (keeping at least
``min_seq_len`` columns, the model's ``first_k_cols``). Masked attention makes this exact:
trimmed and untrimmed batches give the same outputs.

Length bucketing (``bucket_by_length``, off by default) groups rows of similar history length
into the same batch and shuffles the batches: less padding, but a different batch composition
from the plain shuffle.

Under torchrun each rank takes its share of every global batch of the same permutation
(``rank::world_size``), so the ranks together see every sample exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mmctr.data.dataset import HISTORY_COL, SplitData

Batch = dict[str, torch.Tensor]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of epoch ``epoch`` (identical across ranks and reruns)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def batch_sizes(n_rows: int, global_batch: int, world_size: int = 1) -> list[int]:
    """Rows of each global batch of an epoch: full batches, then the rest. A rest too small to
    give every rank two rows is folded into the batch before it: BatchNorm cannot train on
    one row, and no rank is left without rows."""
    sizes = [global_batch] * (n_rows // global_batch)
    rest = n_rows - global_batch * len(sizes)
    if rest and sizes and rest < 2 * world_size:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return sizes


class BatchLoader:
    """Iterates over a :class:`SplitData` in batches of tensors.

    Each batch is a dict with ``item_id`` (B,), ``item_seq`` (B, L') int64 with L' <= L after
    trimming, the side features (B,), ``label`` (B,) float32 when the split has labels, and
    ``index`` (B,) the file row numbers of the batch.
    """

    def __init__(
        self,
        split: SplitData,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        min_seq_len: int = 1,
        trim_padding: bool = True,
        bucket_by_length: bool = False,
        on_device: bool = False,
        pin_memory: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.min_seq_len = max(1, int(min_seq_len))
        self.trim_padding = trim_padding
        self.bucket_by_length = bucket_by_length
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # Inputs as tensors once; ids as int64 for embedding lookups except the wide history
        # column, kept int32 in memory and widened per batch.
        store = self.device if on_device else torch.device("cpu")
        self._tensors: dict[str, torch.Tensor] = {
            k: torch.from_numpy(v).to(store) for k, v in split.columns.items()
        }
        if split.labels is not None:
            self._tensors["label"] = torch.from_numpy(split.labels).to(store)
        # lengths twice: on the host, where the batch width and item count are read without
        # waiting for a device, and where the gather runs
        self._seq_len_host = split.seq_len.astype(np.int64)
        self._seq_len = torch.from_numpy(self._seq_len_host).to(store)
        self._hist_values = torch.from_numpy(split.history.values).to(store)
        self._hist_offsets = torch.from_numpy(split.history.offsets).to(store)
        self._pin = pin_memory and self.device.type == "cuda" and not on_device
        self._width = split.seq_width

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> torch.Tensor:
        n = self.split.n_rows
        if not self.shuffle:
            return torch.arange(n)
        perm = epoch_permutation(n, self.seed, self.epoch)
        if self.bucket_by_length:
            perm = self._bucketed(perm)
        return perm

    def _bucketed(self, perm: torch.Tensor) -> torch.Tensor:
        """Sort each window of 50 global batches by length, then shuffle the full batches;
        the last one (partial, or folded) stays last, where the trainer's windows expect it."""
        gb = self.batch_size * self.world_size
        window = gb * 50
        lens = torch.from_numpy(self._seq_len_host)[perm]
        parts = []
        for s in range(0, len(perm), window):
            chunk = perm[s : s + window]
            parts.append(chunk[torch.argsort(lens[s : s + window], stable=True)])
        sorted_perm = torch.cat(parts)
        sizes = batch_sizes(len(sorted_perm), gb, self.world_size)
        n_full = sum(1 for size in sizes if size == gb)  # a partial or folded one stays last
        g = torch.Generator().manual_seed(int(self.seed) * 7919 + self.epoch)
        order = torch.randperm(n_full, generator=g).tolist()
        return torch.cat(
            [sorted_perm[i * gb : (i + 1) * gb] for i in order] + [sorted_perm[n_full * gb :]]
        )

    def __len__(self) -> int:
        return len(
            batch_sizes(self.split.n_rows, self.batch_size * self.world_size, self.world_size)
        )

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, start: int = 0) -> Iterator[Batch]:
        """This epoch's batches from batch number ``start`` on (a resume mid-epoch skips the
        ones already trained; the order is the same, a function of seed and epoch)."""
        order = self._order()
        s = 0
        sizes = batch_sizes(len(order), self.batch_size * self.world_size, self.world_size)
        for n, size in enumerate(sizes):
            idx = order[s : s + size]
            s += size
            if n < start:
                continue
            if self.world_size > 1:
                idx = idx[self.rank :: self.world_size]
            yield self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        """The batch of rows ``idx`` (file row numbers), trimmed and on the target device."""
        idx_s = idx.to(self._seq_len.device)
        batch: Batch = {k: t.index_select(0, idx_s) for k, t in self._tensors.items()}
        batch[HISTORY_COL] = self._history(idx_s, idx.cpu().numpy())
        batch["index"] = idx_s
        out: Batch = {}
        for k, t in batch.items():
            if t.dtype == torch.int32:
                t = t.long()
            if self._pin:
                t = t.pin_memory()
            out[k] = t.to(self.device, non_blocking=True)
        return out

    def _history(self, idx: torch.Tensor, idx_host: np.ndarray) -> torch.Tensor:
        """Left-padded (B, L') histories of rows ``idx`` rebuilt from the compact store.

        L' is the file width, or with trimming the longest history of the batch (at least
        ``min_seq_len``). Work is proportional to the number of real items, not B * width.
        The width and the item count come from the host copy of the lengths (``idx_host``:
        the same rows), so a store on the GPU (``on_device``) never makes the host wait.
        """
        lens = self._seq_len.index_select(0, idx)
        lens_host = self._seq_len_host[idx_host]
        width = self._width
        if self.trim_padding and len(idx):
            width = min(width, max(int(lens_host.max()), self.min_seq_len))
        total = int(lens_host.sum()) if len(idx) else 0
        out = torch.zeros(len(idx), width, dtype=torch.int64, device=lens.device)
        if total:
            row = torch.repeat_interleave(
                torch.arange(len(idx), device=lens.device), lens, output_size=total
            )
            first = torch.cumsum(lens, 0) - lens  # position of each row's first item in the gather
            pos = torch.arange(total, device=lens.device) - first.index_select(0, row)
            src = self._hist_offsets.index_select(0, idx).index_select(0, row) + pos
            col = width - lens.index_select(0, row) + pos
            out[row, col] = self._hist_values.index_select(0, src).long()
        return out
