"""Transformer-DCN, the first-place MMCTR architecture, with the padding mask the right way round.

    target, history = ItemEncoder(item_id), ItemEncoder(item_seq)      (B, D), (B, L, D)
    seq   = SequenceEncoder(history, target, pad)                      (B, k*2D [+ 2D])
    x     = [side features || target || seq]                           (B, W)
    h     = [CrossNetV2(x) || MLP(x; dcn_hidden_units)]                (B, W + H)
    logit = MLP(h; mlp_hidden_units) -> 1                              (B,)

The peers pass ``mask = item_seq > 0`` (True = real item) as ``src_key_padding_mask``, whose
True means IGNORE, so their attention reads only padding. Here ``pad = item_seq == 0``.

The readout's padding positions are exact zeros in x, (k - n) blocks of 2D for a row of n < k
real items, and stay zero through every cross layer; on the CPU the cross network skips them
(:mod:`mmctr.models.padded_cross`; exact up to rounding).
"""

from __future__ import annotations

import torch

from mmctr.config.schema import DatasetConfig, TransformerDCNConfig
from mmctr.data.dataset import ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.layers import MLP, CrossNetV2, SequenceEncoder


def sequence_encoder(item_dim: int, cfg: TransformerDCNConfig) -> SequenceEncoder:
    """The Transformer over [history item || target] tokens that the config describes."""
    return SequenceEncoder(
        item_dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.transformer_layers,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.transformer_dropout,
        first_k_cols=cfg.first_k_cols,
        concat_max_pool=cfg.concat_max_pool,
    )


def parallel_dcn(width: int, cfg: TransformerDCNConfig) -> tuple[CrossNetV2, MLP, MLP]:
    """The interaction arch over a (B, width) input: CrossNetV2 beside an MLP
    (``dcn_hidden_units``), then the head MLP (``mlp_hidden_units``) -> 1 logit."""
    cross = CrossNetV2(width, cfg.dcn_cross_layers, cfg.cross_low_rank, cfg.cross_num_experts)
    dnn = MLP(width, cfg.dcn_hidden_units, cfg.hidden_activations, cfg.net_dropout, cfg.batch_norm)
    head = MLP(
        width + dnn.output_dim,
        cfg.mlp_hidden_units,
        cfg.hidden_activations,
        cfg.net_dropout,
        cfg.batch_norm,
        output_dim=1,
    )
    return cross, dnn, head


class TransformerDCN(CTRModel):
    def __init__(self, cfg: TransformerDCNConfig, dataset: DatasetConfig, items: ItemTable) -> None:
        super().__init__(cfg, dataset, items)
        if cfg.transformer_layers < 1:
            raise ValueError("transformer_layers must be at least 1 (Transformer_DCN_TA takes 0)")
        self.min_seq_len = cfg.first_k_cols
        item_dim = self.item_encoder.out_dim
        self.sequence = sequence_encoder(item_dim, cfg)
        width = self.side_encoder.out_dim + item_dim + self.sequence.out_dim
        self.cross, self.parallel_dnn, self.head = parallel_dcn(width, cfg)
        self.input_width = width

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target, history, pad = self.encode_items(batch)
        seq = self.sequence(history, target, pad)
        side = self.side_encoder(batch)
        x = torch.cat([side, target, seq.to(target.dtype)], dim=-1)
        # The readout's padding positions are exact zeros: k - n blocks of 2D for n real items.
        k, width = self.sequence.first_k_cols, self.sequence.d_model
        zeros = (k - (~pad).sum(dim=1).clamp(max=k)) * width
        cross = self.cross(x, zeros, start=side.shape[1] + target.shape[1])
        h = torch.cat([cross, self.parallel_dnn(x)], dim=-1)
        return self.head(h).squeeze(-1)
