"""Models selectable by the ``model:`` key. Each returns logits; the loss lives in training."""

from __future__ import annotations

from mmctr.config.errors import ConfigError
from mmctr.config.schema import DatasetConfig, ModelBase, embedding_init_std
from mmctr.data.dataset import ItemTable
from mmctr.models.base import CTRModel
from mmctr.models.dcnv2 import DCNv2
from mmctr.models.din import DIN
from mmctr.models.transformer_dcn import TransformerDCN
from mmctr.models.transformer_dcn_ta import TargetAwareTransformerDCN

MODELS: dict[str, type[CTRModel]] = {
    "Transformer_DCN": TransformerDCN,
    "Transformer_DCN_TA": TargetAwareTransformerDCN,
    "DIN": DIN,
    "DCNv2": DCNv2,
}


def build_model(cfg: ModelBase, dataset: DatasetConfig, items: ItemTable) -> CTRModel:
    """The model named by ``cfg.model``, built for ``dataset`` and its item tables.

    A value the layers refuse (``num_heads`` that does not divide the token width, ...) is a
    :class:`ConfigError`: the user's to fix. Under ``torch.device("meta")`` this costs no
    memory, which is how ``run_expid.py --check`` tries it.
    """
    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; known models: {sorted(MODELS)}")
    try:
        model = MODELS[cfg.model](cfg, dataset, items)
    except ValueError as exc:
        raise ConfigError(f"model {cfg.model} cannot be built from this config: {exc}") from exc
    model.reset_parameters(embedding_init_std(cfg.embedding_initializer))
    return model


__all__ = [
    "CTRModel",
    "MODELS",
    "build_model",
    "TransformerDCN",
    "TargetAwareTransformerDCN",
    "DIN",
    "DCNv2",
]
