"""Test helpers: write a tiny experiment config folder pointing at the tiny dataset."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_MODEL = {
    "model": "Transformer_DCN",
    "dataset_id": "tiny",
    "embedding_dim": 8,
    "pretrained_proj_dim": 8,
    "transformer_layers": 1,
    "num_heads": 2,
    "dim_feedforward": 16,
    "transformer_dropout": 0.1,
    "first_k_cols": 2,
    "dcn_cross_layers": 1,
    "dcn_hidden_units": [16],
    "mlp_hidden_units": [8],
    "net_dropout": 0.1,
    "batch_size": 256,
    "learning_rate": 3e-3,
    "epochs": 2,
    "early_stop_patience": 5,
    "max_len": 24,
    "seed": 7,
    # fp32, whatever the CPU: tests that compare numbers exactly must not depend on whether this
    # machine has AVX512-BF16/AMX ("auto" turns bf16 autocast on there). bf16 is tested explicitly.
    "bf16": False,
}


def write_experiment(
    tmp_path: Path, data_dir: Path, expid: str = "tiny_exp", **params
) -> tuple[Path, str]:
    """config folder with model_config.yaml + dataset_config.yaml -> (config_dir, expid)."""
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    block = {**TINY_MODEL, "model_root": str(tmp_path / "ckpt"), **params}
    (cfg_dir / "model_config.yaml").write_text(yaml.safe_dump({"Base": {}, expid: block}))
    feature_cols = [
        {"name": "user_id", "active": True, "dtype": "int", "type": "meta"},
        {"name": "item_seq", "active": True, "dtype": "int", "type": "meta"},
        {
            "name": "likes_level",
            "active": True,
            "dtype": "int",
            "type": "categorical",
            "vocab_size": 11,
        },
        {
            "name": "views_level",
            "active": True,
            "dtype": "int",
            "type": "categorical",
            "vocab_size": 11,
        },
        {
            "name": "item_id",
            "active": True,
            "dtype": "int",
            "type": "categorical",
            "vocab_size": 300,
            "source": "item",
        },
        {
            "name": "item_tags",
            "active": True,
            "dtype": "int",
            "type": "sequence",
            "max_len": 5,
            "vocab_size": 11740,
            "source": "item",
        },
        {
            "name": "item_emb_d128",
            "active": True,
            "dtype": "float",
            "type": "embedding",
            "source": "item",
            "embedding_dim": 128,
        },
    ]
    dataset = {
        "tiny": {
            "data_root": str(data_dir),
            "data_format": "parquet",
            "train_data": str(data_dir / "train.parquet"),
            "valid_data": str(data_dir / "valid.parquet"),
            "test_data": str(data_dir / "test.parquet"),
            "item_info": str(data_dir / "item_info.parquet"),
            "rebuild_dataset": False,
            "feature_cols": feature_cols,
            "label_col": {"name": "label", "dtype": "float"},
        }
    }
    (cfg_dir / "dataset_config.yaml").write_text(yaml.safe_dump(dataset))
    return cfg_dir, expid
