"""Small reusable layers: item/side feature embeddings, masks, the sequence encoder, CrossNetV2, MLP.

Shapes: B = batch, L = history length, D = item representation width, E = embedding_dim.
Masks: ``pad`` tensors are True where a position is PADDING (ignored), the convention of
``nn.TransformerEncoder``'s ``src_key_padding_mask``. ``valid`` tensors are the opposite.
No layer mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from mmctr.config.schema import (
    ACTIVATIONS,
    IDENTITY_ACTIVATIONS,
    DatasetConfig,
    FeatureSpec,
    torch_activation_class,
)
from mmctr.data.dataset import TARGET_COL, ItemTable
from mmctr.models.padded_cross import cross_skipping_zeros

# ACTIVATIONS (the names the config loader accepts) but those that need the layer's width
_PLAIN_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "leakyrelu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "softmax": partial(nn.Softmax, dim=-1),  # FuxiCTR's: over the last dimension
}
_WIDTH_ACTIVATIONS = ("prelu", "dice")
assert {*_PLAIN_ACTIVATIONS, *_WIDTH_ACTIVATIONS} == set(ACTIVATIONS), (
    "layers and schema name other activations"
)


def get_activation(name: str | None, dim: int | None = None) -> nn.Module:
    """FuxiCTR activation names (case-insensitive): relu, prelu, leaky_relu, sigmoid, tanh, gelu,
    softmax, dice; None / 'linear' for identity; else a ``torch.nn`` activation class by its
    exact name ("SiLU", "ELU"), as FuxiCTR looks it up. prelu and dice learn one parameter per
    unit and need the layer width ``dim``, as FuxiCTR's do. The config loader accepts the same
    names."""
    if name is None or str(name).lower() in IDENTITY_ACTIVATIONS:
        return nn.Identity()
    key = str(name).lower()
    if key in _PLAIN_ACTIVATIONS:
        return _PLAIN_ACTIVATIONS[key]()
    if key in _WIDTH_ACTIVATIONS:
        if dim is None:
            raise ValueError(f"{name} needs the layer width")
        return PReLU(dim) if key == "prelu" else Dice(dim)
    cls = torch_activation_class(str(name))
    if cls is None:
        raise ValueError(f"unknown activation {name!r}")
    return cls()


class PReLU(nn.PReLU):
    """FuxiCTR's prelu: one learned slope per unit, initialised to 0.1, over the LAST dimension
    (``nn.PReLU`` puts channels on dimension 1, which for (B, L, H) inputs would be L)."""

    def __init__(self, dim: int) -> None:
        super().__init__(num_parameters=dim, init=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.prelu(x.reshape(-1, x.shape[-1]), self.weight).reshape(x.shape)


class Dice(nn.Module):
    """Data-adaptive activation of DIN: p(x) * x + (1 - p(x)) * alpha * x, p = sigmoid(BN(x))."""

    def __init__(self, dim: int, eps: float = 1e-9) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        p = torch.sigmoid(self.bn(flat)).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


class MLP(nn.Module):
    """Linear -> [BatchNorm] -> activation -> [Dropout] blocks, optionally a final Linear to
    ``output_dim``. Input (..., in_dim) -> (..., hidden_units[-1] or output_dim)."""

    def __init__(
        self,
        input_dim: int,
        hidden_units: list[int],
        activation: str | None = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        output_dim: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = input_dim
        for h in hidden_units:
            layers.append(nn.Linear(dim, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(get_activation(activation, h))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = h
        if output_dim is not None:
            layers.append(nn.Linear(dim, output_dim))
            dim = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2 and any(isinstance(m, nn.BatchNorm1d | Dice) for m in self.net):
            return self.net(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.output_dim)
        return self.net(x)


def masked_mean(emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim -2 of ``emb`` (..., T, E) where ``valid`` (..., T) is True; 0 if none."""
    w = valid.to(emb.dtype).unsqueeze(-1)
    return (emb * w).sum(-2) / w.sum(-2).clamp_min(1.0)


class ItemEncoder(nn.Module):
    """Item representation shared by the target item and every history item.

    For each active item-side feature (``source: item``):
    - the item id itself (categorical ``item_id``): a trainable embedding (E);
    - other categorical item features: a frozen id -> value table, then an embedding (E);
    - ``sequence`` features (item_tags): frozen id -> tags table, embedding, masked mean (E);
    - ``embedding`` features (item_emb_d128): frozen id -> vector table (the multimodal
      embedding cache) and a trainable linear projection to the feature's ``embedding_dim``
      (FuxiCTR semantics; ``pretrained_proj_dim`` overrides it), or E when it has none.
    Output: the concatenation, (..., D). Item id 0 is padding: its tables are all zero.

    The item tables are registered as buffers, so a checkpoint is self-contained.

    ``id_dropout`` (set by the model; 0 = off): while training, each looked-up item-id
    embedding is zeroed with this probability (the others scaled by 1 / (1 - p), as
    ``nn.Dropout`` does), so the content features have to carry the item too.
    """

    id_dropout: float = 0.0

    def __init__(
        self,
        dataset: DatasetConfig,
        items: ItemTable,
        embedding_dim: int,
        pretrained_proj_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.specs: list[FeatureSpec] = dataset.item_features
        self.embeddings = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        self.out_dim = 0
        for f in self.specs:
            if f.name == TARGET_COL:
                vocab = max(int(f.vocab_size or 0), items.n_items)
                self.embeddings[f.name] = nn.Embedding(vocab, embedding_dim, padding_idx=0)
                self.out_dim += embedding_dim
                continue
            table = torch.from_numpy(np.array(items.features[f.name]))
            if f.type == "embedding":
                self.register_buffer(f"table_{f.name}", table.float())
                out = int(pretrained_proj_dim or f.embedding_dim or embedding_dim)
                self.projections[f.name] = nn.Linear(table.shape[1], out, bias=False)
                self.out_dim += out
            elif f.type in ("categorical", "sequence"):
                self.register_buffer(f"table_{f.name}", table.long())
                vocab = int(f.vocab_size or int(table.max()) + 1)
                self.embeddings[f.name] = nn.Embedding(vocab, embedding_dim, padding_idx=0)
                self.out_dim += embedding_dim
            else:
                raise ValueError(f"item feature {f.name!r}: type {f.type!r} is not supported")

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        parts = []
        for f in self.specs:
            if f.name == TARGET_COL:
                parts.append(self._id_embedding(self.embeddings[f.name](item_ids)))
                continue
            table = getattr(self, f"table_{f.name}")
            values = table[item_ids]
            if f.type == "embedding":
                parts.append(self.projections[f.name](values))
            elif f.type == "sequence":
                parts.append(masked_mean(self.embeddings[f.name](values), values != 0))
            else:
                parts.append(self.embeddings[f.name](values))
        return torch.cat(parts, dim=-1)

    @property
    def match_features(self) -> list[str]:
        """The item features :meth:`match` compares: the ``sequence`` ones (item_tags) and
        the frozen ``embedding`` ones (item_emb_d128)."""
        return [f.name for f in self.specs if f.type in ("sequence", "embedding")]

    def match(self, target_ids: torch.Tensor, seq_ids: torch.Tensor) -> torch.Tensor:
        """(B,), (B, L) -> (B, L, F), how alike each history item and the target are by
        their fixed features, nothing learned: for a ``sequence`` feature (item_tags) the
        share of the target's values the history item also carries, for a frozen
        ``embedding`` (item_emb_d128) the cosine of the two vectors. 0 for padding."""
        out = []
        kinds = {f.name: f.type for f in self.specs}
        for name in self.match_features:
            table = getattr(self, f"table_{name}")
            t, h = table[target_ids], table[seq_ids]  # (B, S), (B, L, S)
            if kinds[name] == "embedding":
                t = nn.functional.normalize(t.float(), dim=-1)
                h = nn.functional.normalize(h.float(), dim=-1)
                out.append(torch.einsum("bls,bs->bl", h, t))
                continue
            hit = (h.unsqueeze(-1) == t[:, None, None, :]).any(dim=2) & (t != 0).unsqueeze(1)
            n = (t != 0).sum(-1, keepdim=True).clamp_min(1)  # (B, 1)
            out.append(hit.sum(-1) / n)
        if not out:
            return seq_ids.new_zeros((*seq_ids.shape, 0), dtype=torch.float32)
        return torch.stack(out, dim=-1).float()

    def _id_embedding(self, emb: torch.Tensor) -> torch.Tensor:
        p = self.id_dropout
        if not (self.training and p > 0):
            return emb
        keep = torch.rand(emb.shape[:-1], device=emb.device) >= p
        return emb * (keep.unsqueeze(-1).to(emb.dtype) / (1.0 - p))


class SideEncoder(nn.Module):
    """Per-row side features (likes_level, views_level, ...): categorical -> embedding (E),
    numeric -> linear (E). Output (B, n_features * E)."""

    def __init__(self, dataset: DatasetConfig, embedding_dim: int) -> None:
        super().__init__()
        self.specs = dataset.side_features
        self.layers = nn.ModuleDict()
        for f in self.specs:
            if f.type == "categorical":
                if not f.vocab_size:
                    raise ValueError(f"feature {f.name!r} needs vocab_size")
                self.layers[f.name] = nn.Embedding(int(f.vocab_size), embedding_dim, padding_idx=0)
            elif f.type == "numeric":
                self.layers[f.name] = nn.Linear(1, embedding_dim)
            else:
                raise ValueError(f"side feature {f.name!r}: type {f.type!r} is not supported")
        self.out_dim = embedding_dim * len(self.specs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in self.specs:
            x = batch[f.name]
            if f.type == "numeric":
                parts.append(self.layers[f.name](x.float().unsqueeze(-1)))
            else:
                parts.append(self.layers[f.name](x.long()))
        if not parts:
            return torch.zeros(batch[TARGET_COL].shape[0], 0, device=batch[TARGET_COL].device)
        return torch.cat(parts, dim=-1)


def padding_mask(item_seq: torch.Tensor) -> torch.Tensor:
    """(B, L) True where the history position is padding (item id 0)."""
    return item_seq == 0


class SequenceEncoder(nn.Module):
    """Transformer over history tokens [history_item || target_item], read out by position.

    Input: history (B, L, D), target (B, D), pad (B, L) True = padding. Each position becomes
    the token [h_i || target] (2D wide); a Transformer encoder runs over the tokens with
    ``src_key_padding_mask=pad`` (padding is never attended to). Readout: the outputs of the
    last ``first_k_cols`` positions, flattened (padding positions zeroed), plus, with
    ``concat_max_pool``, a masked max-pool over real positions through a linear layer.
    Output (B, first_k_cols * 2D [+ 2D]).

    Speed: rows are grouped by real history length into a few chunks (lengths up to m, 2m, 4m,
    ..., m = ``min_chunk_width``, default 1), and each chunk runs trimmed to its own longest
    history (rows sorted by chunk and split, so the backward joins the chunks' gradients with
    one concatenation rather than a batch-sized zero fill per chunk: seed step 1.19-1.31x); a chunk narrower than k has its readout left-padded with zeros, as padding
    positions are. Every row is computed exactly as it would be alone (attention only mixes
    positions of the same row), so this changes no result while skipping most of the
    padding, which is most of every MicroLens sequence (demo data, batch 1024: the encoder
    sees 10.7% of the untrimmed tokens; 17.5% with m = k = 16; real items are 8.0%).
    ``length_chunks=None`` (the default) chunks wherever the padding's matrix work costs more
    than a chunk's extra kernel launches and host syncs: on the CPU, and on CUDA in fp32; not
    under CUDA bf16 autocast, where the GPU is launch-bound. Measured on an H200 (seed
    config, batch 1024): bf16 1.27x faster without chunks (side by side); fp32 15.3K samples/s
    with them against 11.4K without (two separate runs; README, Performance).
    """

    def __init__(
        self,
        item_dim: int,
        num_heads: int = 1,
        num_layers: int = 2,
        dim_feedforward: int = 256,
        dropout: float = 0.2,
        first_k_cols: int = 16,
        concat_max_pool: bool = True,
        length_chunks: bool | None = None,
        min_chunk_width: int = 1,
    ) -> None:
        super().__init__()
        self.d_model = 2 * item_dim
        if self.d_model % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide the token width 2*item_dim={self.d_model}"
            )
        layer = nn.TransformerEncoderLayer(
            self.d_model, num_heads, dim_feedforward, dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.first_k_cols = int(first_k_cols)
        self.concat_max_pool = concat_max_pool
        self.pool_linear = nn.Linear(self.d_model, self.d_model) if concat_max_pool else None
        self.length_chunks = length_chunks
        self.min_chunk_width = max(1, int(min_chunk_width))
        self.out_dim = self.first_k_cols * self.d_model + (self.d_model if concat_max_pool else 0)

    @staticmethod
    def chunks_by_default(on_cuda: bool, bf16_autocast: bool) -> bool:
        """What ``length_chunks=None`` means: chunk, except under CUDA bf16 autocast."""
        return not (on_cuda and bf16_autocast)

    def _encode(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(b, l, 2D) tokens -> (b, out_dim) readout, for rows padded to a common width l."""
        k = self.first_k_cols
        # A row with no real item would make attention all -inf (NaN); let it see its last
        # position (a padding token) instead. A new tensor: the caller's mask is untouched.
        empty = pad.all(dim=1, keepdim=True)
        last = torch.zeros_like(pad)
        last[:, -1] = True
        attn_pad = pad & ~(empty & last)
        z = self.encoder(tokens, src_key_padding_mask=attn_pad)
        z = z.masked_fill(pad.unsqueeze(-1), 0.0)
        width = z.shape[1]
        tail = z[:, -k:] if width >= k else nn.functional.pad(z, (0, 0, k - width, 0))
        out = tail.flatten(1)
        if self.pool_linear is not None:
            pooled = z.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(dim=1)
            pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)
            out = torch.cat([out, self.pool_linear(pooled)], dim=-1)
        return out

    def forward(
        self, history: torch.Tensor, target: torch.Tensor, pad: torch.Tensor
    ) -> torch.Tensor:
        b, seq_w, _ = history.shape
        chunks = self.length_chunks
        if chunks is None:
            chunks = self.chunks_by_default(history.is_cuda, torch.is_autocast_enabled("cuda"))
        if not chunks or b == 0:
            tokens = torch.cat([history, target.unsqueeze(1).expand(-1, seq_w, -1)], dim=-1)
            return self._encode(tokens, pad)
        lengths = (~pad).sum(dim=1)
        m = self.min_chunk_width
        # chunk id: 0 for length <= m, 1 for <= 2m, 2 for <= 4m, ...
        ratio = torch.clamp(lengths.float() / m, min=1.0)
        chunk = torch.ceil(torch.log2(ratio)).long()
        # Rows sorted by chunk (stable: each chunk keeps its rows in batch order), then split:
        # each chunk is a slice, and autograd joins the slices' gradients with one cat
        # instead of a batch-sized zero fill per chunk. Tokens are built per chunk, at its width.
        order = torch.argsort(chunk, stable=True)
        _, counts = torch.unique_consecutive(chunk.index_select(0, order), return_counts=True)
        sizes = counts.tolist()
        parts = zip(
            torch.split(history.index_select(0, order), sizes),
            torch.split(target.index_select(0, order), sizes),
            torch.split(pad.index_select(0, order), sizes),
            torch.split(lengths.index_select(0, order), sizes),
        )
        outs = []
        for h, t, p, n in parts:
            width = min(seq_w, max(m, int(n.max())))
            h, p = h[:, seq_w - width :], p[:, seq_w - width :]
            tokens = torch.cat([h, t.unsqueeze(1).expand(-1, width, -1)], dim=-1)
            outs.append(self._encode(tokens, p).to(history.dtype))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=order.device)
        return torch.cat(outs).index_select(0, inverse)


class CrossNetV2(nn.Module):
    """DCN-V2 cross network: x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, (B, d) -> (B, d).

    ``low_rank=None`` is the full-rank layer (d*d weights per layer, as the peers). An int r
    gives the low-rank mixture of ``num_experts`` experts (DCN-Mix, FuxiCTR's ``CrossNetMix``):
    expert e of layer l computes x_0 * (U_le tanh(C_le tanh(V_le^T x_l)) + b_l), with U, V
    (d, r) and C (r, r), and a softmax over the experts' gates g_e(x_l) (one bias-free linear
    per expert, shared by the layers) mixes them: far fewer parameters for wide inputs.

    ``forward(x0, zeros, start)``: row i of x0 is 0 in the columns [start, start + zeros[i])
    (Transformer-DCN's padding readout). The full-rank network then skips those rows and
    columns of every W, exactly (:mod:`mmctr.models.padded_cross`), where ``skip_zeros`` says
    so: None (the default) on the CPU, where grouping rows by ``zeros`` costs no host wait.
    ``group_overhead_rows`` prices a row group's fixed cost (see
    :func:`~mmctr.models.padded_cross.row_groups`).
    """

    skip_zeros: bool | None = None
    group_overhead_rows: int = 64

    def __init__(
        self, input_dim: int, num_layers: int, low_rank: int | None = None, num_experts: int = 1
    ) -> None:
        super().__init__()
        self.low_rank = low_rank
        if low_rank is None:
            self.layers = nn.ModuleList(nn.Linear(input_dim, input_dim) for _ in range(num_layers))
        else:
            e, r = num_experts, int(low_rank)
            self.U = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(e, input_dim, r)))
                for _ in range(num_layers)
            )
            self.V = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(e, input_dim, r)))
                for _ in range(num_layers)
            )
            self.C = nn.ParameterList(
                nn.Parameter(nn.init.xavier_normal_(torch.empty(e, r, r)))
                for _ in range(num_layers)
            )
            self.bias = nn.ParameterList(
                nn.Parameter(torch.zeros(input_dim)) for _ in range(num_layers)
            )
            self.gates = nn.ModuleList(nn.Linear(input_dim, 1, bias=False) for _ in range(e))

    def forward(
        self, x0: torch.Tensor, zeros: torch.Tensor | None = None, start: int = 0
    ) -> torch.Tensor:
        x = x0
        skip = self.skip_zeros if self.skip_zeros is not None else x0.device.type == "cpu"
        if self.low_rank is None and zeros is not None and skip and x0.shape[0] > 0:
            return cross_skipping_zeros(x0, self.layers, zeros, start, self.group_overhead_rows)
        if self.low_rank is None:
            for layer in self.layers:
                x = x0 * layer(x) + x
            return x
        for U, V, C, b in zip(self.U, self.V, self.C, self.bias):
            # experts: (B, e, r) in the low-rank space, then (B, e, d)
            low = torch.tanh(torch.einsum("bd,edr->ber", x, V))
            low = torch.tanh(torch.einsum("ber,esr->bes", low, C))
            expert = torch.einsum("bes,eds->bed", low, U) + b
            expert = x0.unsqueeze(1) * expert
            gate = torch.softmax(torch.cat([g(x) for g in self.gates], dim=-1), dim=-1)
            x = (gate.unsqueeze(-1) * expert).sum(1) + x
        return x


class TargetAttention(nn.Module):
    """DIN's local activation unit: weights history items by their relevance to the target.

    history (B, L, D), target (B, D), valid (B, L) True = real item -> pooled (B, D).
    Padding positions get weight 0 (or -inf before the softmax with ``use_softmax``). When the
    scoring MLP holds batch statistics (Dice, batch_norm) and is training, it scores the real
    items only: padding would enter the statistics, and how much padding a batch carries
    (trimmed or not) would change the model.
    """

    def __init__(
        self,
        item_dim: int,
        hidden_units: list[int],
        activation: str = "Dice",
        output_activation: str | None = None,
        dropout: float = 0.0,
        use_softmax: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = MLP(4 * item_dim, hidden_units, activation, dropout, output_dim=1)
        self.out_act = get_activation(output_activation, 1)
        self.use_softmax = use_softmax
        self.batch_stats = any(isinstance(m, nn.BatchNorm1d | Dice) for m in self.mlp.modules())

    def _score(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The MLP's raw score of items ``h`` against targets ``t`` (same shape) -> (...)."""
        return self.mlp(torch.cat([t, h, t - h, t * h], -1)).squeeze(-1)

    def forward(
        self, history: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(history)
        rows = cols = None
        if self.batch_stats and self.training:  # score the real items only (a host wait)
            rows, cols = valid.nonzero(as_tuple=True)
            if len(rows) < 2:  # BatchNorm cannot train on one row: score every position
                rows = cols = None
        if rows is not None:
            real = self._score(t[rows, cols], history[rows, cols])
            scores = real.new_zeros(valid.shape).index_put((rows, cols), real)
        else:
            scores = self._score(t, history)
        scores = self.out_act(scores)
        if self.use_softmax:
            scores = scores.masked_fill(~valid, float("-inf"))
            scores = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        else:
            scores = scores * valid.to(scores.dtype)
        return (scores.unsqueeze(-1) * history).sum(1)


class TargetInterest(nn.Module):
    """Target-aware read-out of the history: how much, and which of, the history the target
    resembles.

    history (B, L, D) left-padded (most recent LAST), target (B, D), pad (B, L) True =
    padding -> (B, out_dim). With H = ``num_heads`` and d = ``head_dim``, per head:

    - similarity ``s_j = <W_q t, W_k h_j> / sqrt(d)`` of the target with each history item;
    - attention ``a = softmax_j(s_j + r[age_j])`` over the real items, ``r`` a learned bias
      per recency bucket (age 0 = the most recent item; ages past ``recency_buckets - 1``
      share the last bucket);
    - ``pooled = sum_j a_j W_v h_j`` (d), and ``pooled * W_t t`` (d): an explicit product,
      so a linear layer downstream reads a learned dot product with the target;
    - three scalars: the attended similarity ``sum_j a_j s_j``, the largest and the mean
      similarity over the real items.

    With ``num_match`` = F > 0, ``match`` (B, L, F) holds fixed similarities of each history
    item with the target (:meth:`ItemEncoder.match`: the share of the target's tags it
    carries, the cosine of the frozen embeddings); they add ``match @ w`` (a learned weight per feature and head) to the attention
    logits and F * (H + 2) read-outs: the attended share per head, the largest and the mean.
    Exact matches are what sparse ids say before any embedding is learned (SIM's hard search
    by category, Pi et al., CIKM 2020).

    Output: ``[pooled || pooled * W_t t || scalars]`` over the heads [``|| match read-outs``],
    (B, H * (2d + 3) [+ F * (H + 2)]). A row with no real item reads all zeros (its attention
    is empty, not NaN). Dot products are
    what a multiplicative click signal needs; an MLP over concatenated vectors has to
    approximate them (Rendle et al., RecSys 2020).
    """

    def __init__(
        self,
        item_dim: int,
        num_heads: int = 4,
        head_dim: int = 16,
        recency_buckets: int = 32,
        num_match: int = 0,
    ) -> None:
        super().__init__()
        self.h, self.d = int(num_heads), int(head_dim)
        self.num_match = int(num_match)
        self.match_weight = nn.Parameter(torch.zeros(self.num_match, self.h))
        width = self.h * self.d
        self.query = nn.Linear(item_dim, width, bias=False)
        self.key = nn.Linear(item_dim, width, bias=False)
        self.value = nn.Linear(item_dim, width, bias=False)
        self.target_value = nn.Linear(item_dim, width, bias=False)
        self.recency = nn.Parameter(torch.zeros(self.h, int(recency_buckets)))
        self.out_dim = self.h * (2 * self.d + 3) + self.num_match * (self.h + 2)

    def forward(
        self,
        history: torch.Tensor,
        target: torch.Tensor,
        pad: torch.Tensor,
        match: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, seq_w, _ = history.shape
        q = self.query(target).view(b, self.h, 1, self.d)
        k = self.key(history).view(b, seq_w, self.h, self.d).transpose(1, 2)  # (B, H, L, d)
        v = self.value(history).view(b, seq_w, self.h, self.d).transpose(1, 2)
        sim = (q * k).sum(-1) / self.d**0.5  # (B, H, L)
        age = torch.arange(seq_w - 1, -1, -1, device=history.device)
        bias = self.recency[:, age.clamp(max=self.recency.shape[1] - 1)]  # (H, L)
        valid = ~pad.unsqueeze(1)  # (B, 1, L)
        logits = sim + bias
        if self.num_match:
            match = match.to(sim.dtype).masked_fill(pad.unsqueeze(-1), 0.0)  # (B, L, F)
            logits = logits + torch.einsum("blf,fh->bhl", match, self.match_weight.to(sim.dtype))
        logits = logits.masked_fill(~valid, float("-inf"))
        attn = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty rows: all zero
        pooled = (attn.unsqueeze(-1) * v).sum(2)  # (B, H, d)
        tv = self.target_value(target).view(b, self.h, self.d)
        n = valid.sum(-1)  # (B, 1)
        sim0 = sim.masked_fill(~valid, 0.0)
        top = sim.masked_fill(~valid, float("-inf")).amax(-1)
        scalars = torch.stack(
            [
                (attn * sim0).sum(-1),
                torch.where(n > 0, top, torch.zeros_like(top)),
                sim0.sum(-1) / n.clamp_min(1),
            ],
            dim=-1,
        )  # (B, H, 3)
        out = torch.cat([pooled, pooled * tv, scalars], dim=-1).flatten(1)
        if not self.num_match:
            return out
        # per match feature: attended (per head), largest and mean over the real items
        attended = torch.einsum("bhl,blf->bfh", attn, match).flatten(1)
        n_f = n.squeeze(1).unsqueeze(-1).clamp_min(1)  # (B, 1)
        return torch.cat([out, attended, match.amax(1), match.sum(1) / n_f], dim=-1)
