"""What every model shares: the item/side encoders and the regularised parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from mmctr.config.schema import DatasetConfig, ModelBase
from mmctr.data.dataset import HISTORY_COL, TARGET_COL, ItemTable
from mmctr.models.layers import ItemEncoder, SideEncoder, padding_mask


def trim_leading_padding(seq: torch.Tensor, keep_at_least: int = 1) -> torch.Tensor:
    """Drop the leading columns of a left-padded (B, L) history that are 0 in every row."""
    if seq.shape[0] == 0:
        return seq
    longest = int((seq != 0).sum(dim=1).max())
    width = max(longest, keep_at_least, 1)
    return seq[:, -width:] if width < seq.shape[1] else seq


class CTRModel(nn.Module):
    """Base class: ``forward(batch) -> logits (B,)``. The loss lives outside the model.

    ``batch`` holds ``item_id`` (B,), ``item_seq`` (B, L) left-padded with 0 and the side
    features (B,); see :class:`mmctr.data.batching.BatchLoader`.
    """

    def __init__(self, cfg: ModelBase, dataset: DatasetConfig, items: ItemTable) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_encoder = ItemEncoder(dataset, items, cfg.embedding_dim, cfg.pretrained_proj_dim)
        self.side_encoder = SideEncoder(dataset, cfg.embedding_dim)

    #: histories are never trimmed below this many columns (Transformer_DCN: first_k_cols)
    min_seq_len: int = 1

    def encode_items(self, batch: dict[str, torch.Tensor]):
        """-> target (B, D), history (B, L', D), pad (B, L') True = padding.

        On the CPU, columns that are padding in every row are dropped first (L' = longest
        history, at least ``min_seq_len``), so a batch gives bit-identical outputs however
        much left padding it arrives with. On an accelerator, finding the longest history
        would make the host wait for the device once per step; there the model relies on
        :class:`~mmctr.data.batching.BatchLoader`, which trims on the host before the copy
        (extra padding still gives the same result, up to rounding, as it is masked).
        """
        seq = self.history_ids(batch)
        target = self.item_encoder(batch[TARGET_COL])
        history = self.item_encoder(seq)
        return target, history, padding_mask(seq)

    def reset_parameters(self, embedding_std: float | None = 1e-4) -> None:
        """FuxiCTR's initialisation (``BaseModel.reset_parameters``): every plain
        ``nn.Linear`` gets Xavier-normal weights and zero biases, every trainable embedding
        table N(0, ``embedding_std``) with its padding row zero (FuxiCTR's default
        ``embedding_initializer``). Layers with their own scheme (attention's fused input
        projection, the low-rank cross experts) keep it, as in FuxiCTR. ``None`` keeps
        PyTorch's defaults (N(0, 1) embeddings)."""
        if embedding_std is None:
            return
        for m in self.modules():
            if type(m) is nn.Linear:
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=embedding_std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()

    def history_ids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The (B, L') history ids :meth:`encode_items` encodes (trimmed on the CPU)."""
        seq = batch[HISTORY_COL]
        if seq.device.type == "cpu":
            seq = trim_leading_padding(seq, self.min_seq_len)
        return seq

    def regularization_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(feature embeddings, everything else) for embedding_/net_regularizer, as FuxiCTR
        splits them: the item and side encoders' parameters (embedding tables and the
        projection of item_emb_d128, FuxiCTR's FeatureEmbeddingDict), then every other
        trainable parameter, biases and norms included."""
        encoders = (self.item_encoder, self.side_encoder)
        emb = [p for m in encoders for p in m.parameters() if p.requires_grad]
        emb_ids = {id(p) for p in emb}
        net = [p for p in self.parameters() if p.requires_grad and id(p) not in emb_ids]
        return emb, net
