"""DIN, the challenge's official baseline: target attention over the history.

pooled = TargetAttention(history, target)            (B, D)
logit  = MLP([side || target || pooled]) -> 1        (B,)
"""

from __future__ import annotations

import torch

from mmctr.config.schema import DatasetConfig, DINConfig
from mmctr.data.dataset import ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.layers import MLP, TargetAttention


class DIN(CTRModel):
    def __init__(self, cfg: DINConfig, dataset: DatasetConfig, items: ItemTable) -> None:
        super().__init__(cfg, dataset, items)
        item_dim = self.item_encoder.out_dim
        self.attention = TargetAttention(
            item_dim,
            cfg.attention_hidden_units,
            cfg.attention_hidden_activations,
            cfg.attention_output_activation,
            cfg.attention_dropout,
            cfg.din_use_softmax,
        )
        width = self.side_encoder.out_dim + 2 * item_dim
        self.dnn = MLP(
            width, cfg.dnn_hidden_units, cfg.dnn_activations, cfg.net_dropout, cfg.batch_norm, 1
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target, history, pad = self.encode_items(batch)
        pooled = self.attention(history, target, ~pad)
        x = torch.cat([self.side_encoder(batch), target, pooled], dim=-1)
        return self.dnn(x).squeeze(-1)
