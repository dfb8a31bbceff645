"""Models selectable by the ``model:`` key. Each returns logits; the loss lives in training."""

from __future__ import annotations

from mmctr.config.schema import DatasetConfig, ModelBase
from mmctr.data.dataset import ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.dcnv2 import DCNv2
from mmctr.models.din import DIN
from mmctr.models.transformer_dcn import TransformerDCN

MODELS: dict[str, type[CTRModel]] = {
    "Transformer_DCN": TransformerDCN,
    "DIN": DIN,
    "DCNv2": DCNv2,
}


def build_model(cfg: ModelBase, dataset: DatasetConfig, items: ItemTable) -> CTRModel:
    """The model named by ``cfg.model``, built for ``dataset`` and its item tables."""
    try:
        cls = MODELS[cfg.model]
    except KeyError:
        raise ValueError(f"unknown model {cfg.model!r}; known models: {sorted(MODELS)}") from None
    return cls(cfg, dataset, items)


__all__ = ["CTRModel", "MODELS", "build_model", "TransformerDCN", "DIN", "DCNv2"]
