"""Experiment configs: FuxiCTR YAML in, typed and validated objects out.

Example::

    from mmctr.config import load_config
    cfg = load_config("config/demo", "Transformer_DCN_demo", overrides=["epochs=1"])
"""

from mmctr.config.expid import (
    RUN_ENVIRONMENT_KEYS,
    TUNER_ID_RE,
    canonical_json,
    experiment_hash,
    hashed_params,
    make_expid,
    parse_tuner_id,
)
from mmctr.config.loader import (
    HASH_FOREIGN,
    HASH_MISMATCH_ALLOWED,
    HASH_NOT_TUNER_ID,
    HASH_OK,
    IGNORED_FEATURE_KEYS,
    ConfigError,
    ExperimentConfig,
    YamlLoader,
    build_config,
    list_expids,
    load_config,
    load_yaml,
    parse_override,
    parse_yaml_value,
)
from mmctr.config.schema import (
    FEATURE_TYPES,
    IGNORED_KEYS,
    MODEL_SCHEMAS,
    DatasetConfig,
    FeatureSpec,
    LabelSpec,
    ModelBase,
    TrainerConfig,
)

__all__ = [
    "FEATURE_TYPES",
    "HASH_FOREIGN",
    "HASH_MISMATCH_ALLOWED",
    "HASH_NOT_TUNER_ID",
    "HASH_OK",
    "IGNORED_FEATURE_KEYS",
    "IGNORED_KEYS",
    "MODEL_SCHEMAS",
    "RUN_ENVIRONMENT_KEYS",
    "TUNER_ID_RE",
    "ConfigError",
    "DatasetConfig",
    "ExperimentConfig",
    "FeatureSpec",
    "LabelSpec",
    "ModelBase",
    "TrainerConfig",
    "YamlLoader",
    "build_config",
    "canonical_json",
    "experiment_hash",
    "hashed_params",
    "list_expids",
    "load_config",
    "load_yaml",
    "make_expid",
    "parse_override",
    "parse_tuner_id",
    "parse_yaml_value",
]
