"""Target-aware Transformer-DCN: Transformer_DCN plus a target-aware read-out of the history.

    target, history = ItemEncoder(item_id), ItemEncoder(item_seq)      (B, D), (B, L, D)
    seq      = SequenceEncoder(history, target, pad)                   (B, k*2D [+ 2D])
    interest = TargetInterest(history, target, pad)                    (B, H*(2d+3))
    x     = [side features || target || seq || interest]               (B, W)
    h     = [CrossNetV2(x) || MLP(x; dcn_hidden_units)]                (B, W + H')
    logit = MLP(h; mlp_hidden_units) -> 1                              (B,)

Why: a click often depends on how much the target resembles what the user saw, a dot
product between item representations. Transformer_DCN reads its history by position
(the last k outputs, a max-pool) and leaves every product with the target to the cross
network; :class:`~mmctr.models.layers.TargetInterest` computes them directly, per head,
with a learned recency bias, and hands the cross network the similarities themselves.
``interest_match`` adds fixed similarities of each history item with the target (the share of
the target's item_tags it carries, the cosine of the frozen item_emb_d128) to that read-out.
``transformer_layers: 0`` drops the Transformer and its positional read-out.

Regularisation of the item-id embedding, which sees each item only a few dozen times on
MicroLens-sized data: ``id_dropout`` zeroes a row's whole item-id embedding (target and
history alike) with that probability while training, so the model cannot lean on ids alone
and learns the content features (tags, frozen embedding) that also serve unseen items.
``history_dropout`` turns each history item into padding with that probability while
training: a row seen again in a later epoch comes with another subset of its history, so
the network cannot memorise rows (the "one-epoch" overfitting of deep CTR models, Zhang et
al., CIKM 2022, shows here as a train loss that drops as soon as rows repeat).
"""

from __future__ import annotations

import torch

from mmctr.config.schema import DatasetConfig, TransformerDCNTAConfig
from mmctr.data.dataset import HISTORY_COL, TARGET_COL, ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.layers import TargetInterest
from mmctr.models.transformer_dcn import parallel_dcn, sequence_encoder


class TargetAwareTransformerDCN(CTRModel):
    def __init__(
        self, cfg: TransformerDCNTAConfig, dataset: DatasetConfig, items: ItemTable
    ) -> None:
        super().__init__(cfg, dataset, items)
        item_dim = self.item_encoder.out_dim
        self.item_encoder.id_dropout = float(cfg.id_dropout)
        self.sequence = None
        if cfg.transformer_layers > 0:
            self.min_seq_len = cfg.first_k_cols
            self.sequence = sequence_encoder(item_dim, cfg)
        self.match = cfg.interest_match and bool(self.item_encoder.match_features)
        self.interest = TargetInterest(
            item_dim,
            cfg.interest_heads,
            cfg.interest_head_dim,
            cfg.recency_buckets,
            num_match=len(self.item_encoder.match_features) if self.match else 0,
        )
        seq_dim = self.sequence.out_dim if self.sequence is not None else 0
        width = self.side_encoder.out_dim + item_dim + seq_dim + self.interest.out_dim
        self.cross, self.parallel_dnn, self.head = parallel_dcn(width, cfg)
        self.input_width = width
        self.history_dropout = float(cfg.history_dropout)

    def drop_history(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of ``batch`` whose history items are each dropped with probability
        ``history_dropout``; the kept items close up to the right, in their order, so the
        history stays left-padded (the caller's tensors are untouched)."""
        seq = batch[HISTORY_COL]
        keep = (seq != 0) & (torch.rand(seq.shape, device=seq.device) >= self.history_dropout)
        order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)  # dropped first
        return {**batch, HISTORY_COL: torch.gather(seq * keep, 1, order)}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.training and self.history_dropout > 0:
            batch = self.drop_history(batch)
        target, history, pad = self.encode_items(batch)
        match = None
        if self.match:
            match = self.item_encoder.match(batch[TARGET_COL], self.history_ids(batch))
        side = self.side_encoder(batch)
        parts = [side, target]
        if self.sequence is not None:
            parts.append(self.sequence(history, target, pad).to(target.dtype))
        parts.append(self.interest(history, target, pad, match).to(target.dtype))
        x = torch.cat(parts, dim=-1)
        h = torch.cat([self.cross(x), self.parallel_dnn(x)], dim=-1)
        return self.head(h).squeeze(-1)
