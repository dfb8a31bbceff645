"""The full-rank cross network without the work on a row's padding columns.

In Transformer-DCN the cross network's input is x0 = [side || target || readout || pool], and
the readout holds the Transformer outputs of the last ``first_k_cols`` history positions with
padding positions set to zero. A row with n < k real items therefore carries (k - n) * 2D
exact zeros, in one block of columns [start, start + zeros). They stay zero in every layer:

    x_{l+1} = x0 * (W_l x_l + b_l) + x_l        is 0 wherever x0 is 0,

so W_l x_l needs only the row's other columns of W_l, and only its other rows. For the shipped
MMCTR configs (9,088 columns, k = 16, 2D = 512) a row with 6 real items needs 3,968 of them:
19% of the full layer's products. This module groups the rows by their zero block and runs
each group on the kept rows and columns of every W_l (views, no copies).

Exact: every parameter gets the same gradient as from the dense layers, and the output is
the same, up to the rounding of the shorter sums. The one difference is the gradient sent
back to x0's zero block itself, which is returned as 0: those columns are constant padding
(``masked_fill`` and ``pad`` in the readout discard any gradient there).
"""

from __future__ import annotations

import torch

Ranges = list[tuple[int, int]]


def row_groups(
    zeros: torch.Tensor, width: int, overhead_rows: int = 64
) -> list[tuple[torch.Tensor, int]]:
    """Rows grouped by their count of zero columns (a host read; for the CPU).

    ``zeros`` (B,) -> [(rows, z)], where every row in ``rows`` has at least ``z`` of the
    ``width`` columns zero, and the group is computed on the other ``width - z``. A matrix
    product of m rows on k kept columns costs about k^2 (m + ``overhead_rows``): the fixed part
    is reading and packing the k x k weights, which small groups cannot amortise. Runs of
    neighbouring counts are merged (at the run's smallest count) where that model says it is
    cheaper; with at most k + 1 distinct counts, an exact search over the runs is instant.
    """
    order = torch.argsort(zeros, descending=True, stable=True)
    values, counts = torch.unique_consecutive(zeros.index_select(0, order), return_counts=True)
    vals, cnts = values.tolist(), counts.tolist()
    n = len(vals)
    ends = [0]
    for c in cnts:
        ends.append(ends[-1] + c)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest split of the first j counts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        kept = width - vals[j - 1]  # a run i..j-1 is computed at its smallest count
        for i in range(j):
            cost = best[i] + kept * kept * (ends[j] - ends[i] + overhead_rows)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[tuple[torch.Tensor, int]] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append((order[ends[i] : ends[j]], int(vals[j - 1])))
        j = i
    return groups  # fewest zeros (widest) first


def kept_ranges(width: int, start: int, zeros: int) -> Ranges:
    """Column ranges of a ``width``-wide row outside its zero block [start, start + zeros)."""
    if zeros <= 0:
        return [(0, width)]
    return [(a, b) for a, b in ((0, start), (start + zeros, width)) if b > a]


def _compress(x: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """The columns of ``x`` in ``ranges``, side by side."""
    if len(ranges) == 1:
        return x[:, ranges[0][0] : ranges[0][1]]
    return torch.cat([x[:, a:b] for a, b in ranges], dim=1)


def _expand(xc: torch.Tensor, ranges: Ranges, width: int) -> torch.Tensor:
    out = xc.new_zeros(xc.shape[0], width)
    offset = 0
    for a, b in ranges:
        out[:, a:b] = xc[:, offset : offset + b - a]
        offset += b - a
    return out


def _spans(ranges: Ranges) -> list[tuple[int, int, int, int]]:
    """(a, b, c, d): range [a, b) of the row and its place [c, d) in the compressed row."""
    spans, offset = [], 0
    for a, b in ranges:
        spans.append((a, b, offset, offset + b - a))
        offset += b - a
    return spans


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would multiply ``x`` in, or None (off, or float64: left alone)."""
    if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(x.device.type)
    return None


def _mm_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The product's dtype: autocast's where it applies, else the operands' (promoted)."""
    return _autocast_dtype(x) or torch.promote_types(x.dtype, weight.dtype)


def _matmul_kept(xc: torch.Tensor, weight: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """xc @ W[kept, kept]^T for compressed rows ``xc``: one product per pair of ranges."""
    spans = _spans(ranges)
    dtype = _mm_dtype(xc, weight)
    xc, weight = xc.to(dtype), weight.to(dtype)
    out = xc.new_empty(xc.shape[0], spans[-1][3])
    for a, b, r, s in spans:  # output rows of W
        for i, (c, d, p, q) in enumerate(spans):  # input columns of W
            block = out[:, r:s]
            if i == 0:
                torch.mm(xc[:, p:q], weight[a:b, c:d].t(), out=block)
            else:
                block.addmm_(xc[:, p:q], weight[a:b, c:d].t())
    return out


def _matmul_kept_t(gc: torch.Tensor, weight: torch.Tensor, ranges: Ranges) -> torch.Tensor:
    """gc @ W[kept, kept]: the gradient with respect to the layer's compressed input."""
    spans = _spans(ranges)
    dtype = _mm_dtype(gc, weight)
    gc, weight = gc.to(dtype), weight.to(dtype)
    out = gc.new_empty(gc.shape[0], spans[-1][3])
    for c, d, r, s in spans:  # columns of W = the input
        for i, (a, b, p, q) in enumerate(spans):  # rows of W = the output
            block = out[:, r:s]
            if i == 0:
                torch.mm(gc[:, p:q], weight[a:b, c:d], out=block)
            else:
                block.addmm_(gc[:, p:q], weight[a:b, c:d])
    return out


def _add_outer_kept(
    grad_w: torch.Tensor, gc: torch.Tensor, xc: torch.Tensor, ranges: Ranges, overwrite: bool
):
    """grad_w[kept, kept] += gc^T xc (``overwrite``: =), block by block, in place (in fp32
    without a temporary; under autocast the product is taken in its dtype, then added)."""
    dtype = _mm_dtype(gc, xc)
    gc, xc = gc.to(dtype), xc.to(dtype)
    for a, b, p, q in _spans(ranges):
        for c, d, r, s in _spans(ranges):
            block, left, right = grad_w[a:b, c:d], gc[:, p:q].t(), xc[:, r:s]
            if dtype != grad_w.dtype:
                product = torch.mm(left, right)
                block.copy_(product) if overwrite else block.add_(product)
            elif overwrite:
                torch.mm(left, right, out=block)
            else:
                block.addmm_(left, right)


class _CrossSkippingZeros(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, zeros, start, overhead_rows, *params):
        weights, biases = params[0::2], params[1::2]
        batch, width = x0.shape
        device = x0.device.type
        ctx.autocast = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        cast = _autocast_dtype(x0)
        if cast is not None:  # cast each weight once per step, as autocast's cache does
            weights = tuple(w.to(cast) for w in weights)
        out = x0.new_zeros(batch, width)
        saved = []
        for rows, z in row_groups(zeros, width, overhead_rows):
            ranges = kept_ranges(width, start, z)
            xc0 = _compress(x0.index_select(0, rows), ranges)
            xc, layers = xc0, []
            for w, b in zip(weights, biases):
                u = _matmul_kept(xc, w, ranges) + _compress(b.unsqueeze(0), ranges)
                layers.append((xc, u))
                xc = xc0 * u + xc
            out.index_copy_(0, rows, _expand(xc.to(out.dtype), ranges, width))
            saved.append((rows, ranges, xc0, layers))
        ctx.saved = saved
        ctx.mm_weights = weights
        ctx.save_for_backward(*params)
        ctx.x0_shape = x0.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        if ctx.saved is None:
            raise RuntimeError(
                "the padding-skipping cross network frees its activations in its backward, so "
                "it cannot run backward twice (retain_graph); set model.cross.skip_zeros = False"
            )
        params = ctx.saved_tensors
        weights = ctx.mm_weights
        # The widest group comes first; when it keeps every column (a row with k or more
        # items), its products write the weight gradients whole and no zero fill is needed.
        covered = ctx.saved[0][1] == [(0, ctx.x0_shape[1])]
        grad_w = [torch.empty_like(w) if covered else torch.zeros_like(w) for w in params[0::2]]
        grad_b = [torch.zeros_like(b) for b in params[1::2]]
        batch, width = ctx.x0_shape
        grad_x0 = grad_out.new_zeros(batch, width)
        enabled, dtype = ctx.autocast  # the forward's autocast state
        with torch.autocast(grad_out.device.type, dtype=dtype, enabled=enabled):
            for n, (rows, ranges, xc0, layers) in enumerate(ctx.saved):
                g = _compress(grad_out.index_select(0, rows), ranges)
                g = g.to(torch.promote_types(g.dtype, torch.float32))  # bf16 up, float64 kept
                gx0 = torch.zeros_like(g)
                for i in reversed(range(len(layers))):
                    xc, u = layers[i]
                    gu = g * xc0  # dL/d(W x + b)
                    gx0 += g * u  # x0's direct part
                    _add_outer_kept(grad_w[i], gu, xc, ranges, overwrite=covered and n == 0)
                    gb = gu.sum(0)
                    for a, b, p, q in _spans(ranges):  # the kept entries of the bias
                        grad_b[i][a:b].add_(gb[p:q])
                    g = g + _matmul_kept_t(gu, weights[i], ranges)
                gx0 += g  # x_0 is x0
                grad_x0.index_copy_(0, rows, _expand(gx0.to(grad_x0.dtype), ranges, width))
        ctx.saved = ctx.mm_weights = None  # not held until the graph itself is dropped
        needs = ctx.needs_input_grad
        grads = [g for pair in zip(grad_w, grad_b) for g in pair]
        grads = [g if need else None for g, need in zip(grads, needs[4:])]
        return (grad_x0 if needs[0] else None, None, None, None, *grads)


def cross_skipping_zeros(
    x0: torch.Tensor,
    layers: torch.nn.ModuleList,
    zeros: torch.Tensor,
    start: int,
    overhead_rows: int = 64,
) -> torch.Tensor:
    """The full-rank cross network over ``x0`` (B, W), whose row i is 0 in the columns
    [start, start + zeros[i]); ``layers``: its ``nn.Linear`` (W, W) layers. Rows are grouped
    by :func:`row_groups` with ``overhead_rows``."""
    params = [t for layer in layers for t in (layer.weight, layer.bias)]
    return _CrossSkippingZeros.apply(x0, zeros, int(start), int(overhead_rows), *params)
