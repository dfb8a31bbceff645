"""DCNv2 without a sequence model: the history enters as the masked mean of its items.

x     = [side || target || mean(history)]                               (B, W)
parallel: h = [CrossNetV2(x) || MLP(x)];  stacked: h = MLP(CrossNetV2(x));
crossnet_only: h = CrossNetV2(x);  stacked_parallel: h = [MLP(Cross(x)) || MLP(x)]
logit = Linear(h) -> 1                                                   (B,)
"""

from __future__ import annotations

import torch
from torch import nn

from mmctr.config.schema import DCN_STRUCTURES, DatasetConfig, DCNv2Config
from mmctr.data.dataset import ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.layers import MLP, CrossNetV2, masked_mean


class DCNv2(CTRModel):
    def __init__(self, cfg: DCNv2Config, dataset: DatasetConfig, items: ItemTable) -> None:
        super().__init__(cfg, dataset, items)
        if cfg.model_structure not in DCN_STRUCTURES:
            raise ValueError(
                f"model_structure must be one of {DCN_STRUCTURES}, got {cfg.model_structure!r}"
            )
        item_dim = self.item_encoder.out_dim
        width = self.side_encoder.out_dim + 2 * item_dim
        low_rank = cfg.low_rank if cfg.use_low_rank_mixture else None
        self.cross = CrossNetV2(width, cfg.num_cross_layers, low_rank, cfg.num_experts)
        self.structure = cfg.model_structure
        out = width
        self.stacked = self.parallel = None
        if self.structure in ("stacked", "stacked_parallel"):
            self.stacked = MLP(
                width,
                cfg.stacked_dnn_hidden_units,
                cfg.dnn_activations,
                cfg.net_dropout,
                cfg.batch_norm,
            )
            out = self.stacked.output_dim
        if self.structure in ("parallel", "stacked_parallel"):
            self.parallel = MLP(
                width,
                cfg.parallel_dnn_hidden_units,
                cfg.dnn_activations,
                cfg.net_dropout,
                cfg.batch_norm,
            )
            out += self.parallel.output_dim
        self.fc = nn.Linear(out, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target, history, pad = self.encode_items(batch)
        x = torch.cat([self.side_encoder(batch), target, masked_mean(history, ~pad)], dim=-1)
        h = self.cross(x)
        if self.stacked is not None:
            h = self.stacked(h)
        if self.parallel is not None:
            h = torch.cat([h, self.parallel(x)], dim=-1)
        return self.fc(h).squeeze(-1)
