"""Config loading: FuxiCTR layout, strict validation, overrides, experiment ids, CLI errors."""

from __future__ import annotations

import argparse
import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from mmctr.cli.common import UserError, add_experiment_args, run_cli
from mmctr.config import (
    HASH_FOREIGN,
    HASH_MISMATCH_ALLOWED,
    HASH_NOT_TUNER_ID,
    HASH_OK,
    ConfigError,
    ExperimentConfig,
    FeatureSpec,
    LabelSpec,
    TrainerConfig,
    build_config,
    experiment_hash,
    hashed_params,
    list_expids,
    load_config,
    load_yaml,
    make_expid,
    parse_override,
    parse_tuner_id,
)
from mmctr.config.schema import DINConfig, TransformerDCNConfig
from mmctr.utils import DeviceError

REPO = Path(__file__).resolve().parents[1]

# The dataset block of DATA_CONTRACT.md, verbatim.
DATASET_CONFIG = """\
MicroLens_1M_x1:
    data_root: ./data/
    data_format: parquet
    train_data: ./data/MicroLens_1M_x1/train.parquet
    valid_data: ./data/MicroLens_1M_x1/valid.parquet
    test_data: ./data/MicroLens_1M_x1/test.parquet
    item_info: ./data/MicroLens_1M_x1/item_info.parquet
    rebuild_dataset: False
    feature_cols:
      - {name: user_id, active: True, dtype: int, type: meta}
      - {name: item_seq, active: True, dtype: int, type: meta}
      - {name: likes_level, active: True, dtype: int, type: categorical, vocab_size: 11}
      - {name: views_level, active: True, dtype: int, type: categorical, vocab_size: 11}
      - {name: item_id, active: True, dtype: int, type: categorical, vocab_size: 91718, source: item}
      - {name: item_tags, active: True, dtype: int, type: sequence, max_len: 5, vocab_size: 11740, source: item}
      - {name: item_emb_d128, active: True, dtype: float, type: embedding, source: item, embedding_dim: 128}
    label_col: {name: label, dtype: float}
"""

# A FuxiCTR 2.3.7 model config as the peers ship it (Base with FuxiCTR-only keys).
MODEL_CONFIG = """\
Base:
    model_root: './checkpoints/'
    num_workers: 3
    verbose: 1
    early_stop_patience: 2
    pickle_feature_encoder: True
    save_best_only: True
    eval_steps: null
    debug_mode: False
    group_id: null
    use_features: null
    feature_specs: null
    feature_config: null

Transformer_DCN_MicroLens_1M_x1:
    model: Transformer_DCN
    dataset_id: MicroLens_1M_x1
    loss: 'binary_crossentropy'
    metrics: ['logloss', 'AUC']
    task: binary_classification
    optimizer: adam
    learning_rate: 1.e-3
    embedding_regularizer: 0
    net_regularizer: 0
    batch_size: 128
    embedding_dim: 64
    dcn_cross_layers: 3
    dcn_hidden_units: [1024, 512, 256]
    mlp_hidden_units: [64, 32]
    num_heads: 1
    transformer_layers: 2
    transformer_dropout: 0.2
    dim_feedforward: 256
    net_dropout: 0.2
    first_k_cols: 16
    concat_max_pool: True
    batch_norm: False
    epochs: 100
    shuffle: True
    seed: 2025
    monitor: 'AUC'
    monitor_mode: 'max'

DIN_MicroLens_1M_x1:
    model: DIN
    dataset_id: MicroLens_1M_x1
    learning_rate: 1e-3
    batch_size: 8192
    embedding_dim: 64
    dnn_hidden_units: [1024, 512, 256]
    attention_hidden_units: [512, 256]
    attention_hidden_activations: ReLU
    attention_dropout: 0.1
    net_dropout: 0.1
    max_len: 64
    monitor: {AUC: 1, logloss: -1}
"""

EXPID = "Transformer_DCN_MicroLens_1M_x1"


def write_config(
    tmp_path: Path, model_config: str = MODEL_CONFIG, dataset_config: str = DATASET_CONFIG
) -> Path:
    d = tmp_path / "cfg"
    d.mkdir(exist_ok=True)
    (d / "model_config.yaml").write_text(textwrap.dedent(model_config))
    (d / "dataset_config.yaml").write_text(textwrap.dedent(dataset_config))
    return d


def add_to_block(tmp_path: Path, extra: str, expid: str = EXPID) -> Path:
    """The peer config with the ``key: value`` lines of ``extra`` set in the ``expid`` block
    (replacing the block's own line for the key, if any)."""
    lines = MODEL_CONFIG.splitlines()
    start = lines.index(f"{expid}:")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace()),
        len(lines),
    )
    extra_lines = textwrap.dedent(extra).strip().splitlines()
    keys = {line.split(":", 1)[0] for line in extra_lines}
    block = [line for line in lines[start + 1 : end] if line.strip().split(":", 1)[0] not in keys]
    block += ["    " + line for line in extra_lines]
    return write_config(tmp_path, "\n".join(lines[: start + 1] + block + lines[end:]) + "\n")


# ------------------------------------------------------------------------------ loading


def test_peer_config_resolves_to_the_expected_flat_and_typed_config(tmp_path):
    d = write_config(tmp_path)
    cfg = load_config(d, EXPID)
    mc, dc = f"{d}/model_config.yaml", f"{d}/dataset_config.yaml"

    assert cfg.expid == EXPID
    p = cfg.params
    # Base, then the expid block, then the dataset block
    assert p["model_root"] == "./checkpoints/" and p["num_workers"] == 3
    assert p["model"] == "Transformer_DCN" and p["dataset_id"] == "MicroLens_1M_x1"
    assert p["learning_rate"] == 1e-3 and isinstance(p["learning_rate"], float)
    assert p["embedding_regularizer"] == 0.0 and isinstance(p["embedding_regularizer"], float)
    assert p["dcn_hidden_units"] == [1024, 512, 256]
    assert p["train_data"] == "./data/MicroLens_1M_x1/train.parquet"
    assert p["label_col"] == {"name": "label", "dtype": "float"}
    assert [f["name"] for f in p["feature_cols"]] == [
        "user_id",
        "item_seq",
        "likes_level",
        "views_level",
        "item_id",
        "item_tags",
        "item_emb_d128",
    ]
    assert p["pickle_feature_encoder"] is True  # kept in the record, ignored by the code

    assert cfg.sources["model_root"] == f"{mc}:Base"
    assert cfg.sources["batch_size"] == f"{mc}:{EXPID}"
    assert cfg.sources["feature_cols"] == f"{dc}:MicroLens_1M_x1"
    assert cfg.overrides == [] and cfg.hash_check == HASH_NOT_TUNER_ID

    # typed parts
    assert isinstance(cfg.model, TransformerDCNConfig)
    assert cfg.model.dcn_cross_layers == 3 and cfg.model.num_heads == 1
    assert cfg.model.concat_max_pool is True and cfg.model.first_k_cols == 16
    assert isinstance(cfg.trainer, TrainerConfig)
    assert cfg.trainer.batch_size == 128 and cfg.trainer.learning_rate == 1e-3
    assert cfg.trainer.early_stop_patience == 2 and cfg.trainer.eval_steps is None
    assert cfg.trainer.max_len is None  # not set: the default
    ds = cfg.dataset
    assert ds.dataset_id == "MicroLens_1M_x1" and ds.rebuild_dataset is False
    assert ds.item_info == "./data/MicroLens_1M_x1/item_info.parquet"
    assert ds.label_col == LabelSpec("label", "float")
    assert ds.feature("item_tags") == FeatureSpec(
        name="item_tags", type="sequence", dtype="int", vocab_size=11740, max_len=5, source="item"
    )
    assert [f.name for f in ds.item_features] == ["item_id", "item_tags", "item_emb_d128"]
    assert [f.name for f in ds.side_features] == ["likes_level", "views_level"]
    assert cfg.run_dir == Path("./checkpoints/MicroLens_1M_x1") / EXPID

    # one notice per ignored FuxiCTR key, naming the key and where it came from
    for key in (
        "pickle_feature_encoder",
        "debug_mode",
        "use_features",
        "feature_specs",
        "feature_config",
    ):
        [notice] = [n for n in cfg.notices if f"'{key}'" in n]
        assert f"{mc}:Base" in notice and "ignoring" in notice
    assert len(cfg.notices) == 5


def test_din_block_with_monitor_dict(tmp_path):
    cfg = load_config(write_config(tmp_path), "DIN_MicroLens_1M_x1")
    assert isinstance(cfg.model, DINConfig)
    assert cfg.model.attention_hidden_units == [512, 256]
    assert cfg.trainer.monitor == {"AUC": 1.0, "logloss": -1.0}
    assert cfg.trainer.max_len == 64


def test_model_config_folder_and_dataset_config_folder(tmp_path):
    d = tmp_path / "split"
    (d / "model_config").mkdir(parents=True)
    (d / "dataset_config").mkdir()
    (d / "model_config" / "a.yaml").write_text(MODEL_CONFIG)
    (d / "model_config" / "b.yaml").write_text(
        "Other:\n  model: DIN\n  dataset_id: MicroLens_1M_x1\n  embedding_dim: 8\n"
    )
    (d / "dataset_config" / "mmctr.yaml").write_text(DATASET_CONFIG)
    assert list_expids(d) == [EXPID, "DIN_MicroLens_1M_x1", "Other"]
    cfg = load_config(d, "Other")  # Base of a.yaml is the folder's only Base
    assert cfg.model.embedding_dim == 8 and cfg.trainer.num_workers == 3


def test_feature_cols_name_list_is_expanded(tmp_path):
    dataset = DATASET_CONFIG.replace(
        "      - {name: likes_level, active: True, dtype: int, type: categorical, vocab_size: 11}\n"
        "      - {name: views_level, active: True, dtype: int, type: categorical, vocab_size: 11}\n",
        "      - {name: [likes_level, views_level], active: True, dtype: int, type: categorical,"
        " vocab_size: 11, share_embedding: null}\n",
    )
    cfg = load_config(write_config(tmp_path, dataset_config=dataset), EXPID)
    names = [f.name for f in cfg.dataset.feature_cols]
    assert names[2:4] == ["likes_level", "views_level"]
    assert cfg.dataset.feature("views_level").vocab_size == 11
    assert cfg.params["feature_cols"][3]["name"] == "views_level"
    assert sum("share_embedding" in n for n in cfg.notices) == 2


def test_missing_expid_lists_available_ids_and_closest_match(tmp_path):
    d = write_config(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(d, "Transformer_DCN_MicroLens_1M")
    msg = str(err.value)
    assert "'Transformer_DCN_MicroLens_1M'" in msg and "DIN_MicroLens_1M_x1" in msg
    assert f"did you mean '{EXPID}'" in msg
    with pytest.raises(ConfigError, match="expid 'Base'"):
        load_config(d, "Base")


def test_missing_dataset_id_and_unknown_dataset_id(tmp_path):
    d = write_config(tmp_path, MODEL_CONFIG.replace("    dataset_id: MicroLens_1M_x1\n", "", 1))
    with pytest.raises(ConfigError, match=f"expid '{EXPID}' .* has no dataset_id"):
        load_config(d, EXPID)
    d = write_config(
        tmp_path, MODEL_CONFIG.replace("dataset_id: MicroLens_1M_x1", "dataset_id: MicroLens_1M", 1)
    )
    with pytest.raises(ConfigError) as err:
        load_config(d, EXPID)
    assert "available: MicroLens_1M_x1" in str(
        err.value
    ) and "did you mean 'MicroLens_1M_x1'" in str(err.value)


def test_missing_config_folder_and_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope", EXPID)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model_config.yaml and no model_config/\\*.yaml"):
        load_config(tmp_path / "empty", EXPID)
    d = write_config(tmp_path)
    with pytest.raises(ConfigError, match=f"is a file, not a folder .*try '{d}'"):
        load_config(d / "model_config.yaml", EXPID)


def test_duplicate_key_in_a_block_is_an_error(tmp_path):
    d = write_config(
        tmp_path,
        MODEL_CONFIG.replace("    batch_size: 128\n", "    batch_size: 128\n    batch_size: 256\n"),
    )
    with pytest.raises(ConfigError, match="found key 'batch_size' twice"):
        load_config(d, EXPID)


# --------------------------------------------------------------------------- validation


def test_misspelt_key_names_the_key_its_source_and_the_fix(tmp_path):
    d = add_to_block(tmp_path, "dcn_cros_layers: 4")
    with pytest.raises(ConfigError) as err:
        load_config(d, EXPID)
    msg = str(err.value)
    assert "'dcn_cros_layers'" in msg
    assert f"{d}/model_config.yaml:{EXPID}" in msg
    assert "did you mean 'dcn_cross_layers'" in msg
    assert err.value.problems and len(err.value.problems) == 1


def test_every_bad_key_is_listed_in_one_error(tmp_path):
    d = add_to_block(
        tmp_path,
        """
        dcn_cros_layers: 4
        learning_rat: 0.01
        dnn_hidden_units: [64]
        batch_size: '128'
        transformer_dropout: 1.5
        """,
    )
    dataset = DATASET_CONFIG.replace(
        "vocab_size: 91718, source: item}", "vocab_sise: 91718, source: item}"
    )
    dataset = dataset.replace("type: embedding,", "type: embeding,")
    d = write_config(tmp_path, (d / "model_config.yaml").read_text(), dataset)
    with pytest.raises(ConfigError) as err:
        load_config(d, EXPID)
    msg = str(err.value)
    assert len(err.value.problems) == 7, msg
    assert "7 problems" in msg
    assert "did you mean 'dcn_cross_layers'" in msg
    assert "'learning_rat'" in msg and "did you mean 'learning_rate'" in msg
    assert "'dnn_hidden_units'" in msg and "belongs to model DIN" in msg
    # wrong type: the key, its source and what was found
    assert f"'batch_size' (from {d}/model_config.yaml:{EXPID}) must be int, got str '128'" in msg
    assert "'transformer_dropout'" in msg and "in [0, 1)" in msg
    # inside feature_cols: the feature, the key, the suggestion, the dataset block
    assert "feature_cols[4] 'item_id'" in msg and "'vocab_sise'" in msg
    assert "did you mean 'vocab_size'" in msg
    assert f"{d}/dataset_config.yaml:MicroLens_1M_x1" in msg
    assert "type 'embeding' is not one of" in msg and "did you mean 'embedding'" in msg


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("learning_rate: fast", "'learning_rate' (from"),
        ("concat_max_pool: 1", "'concat_max_pool' (from"),
        ("dcn_hidden_units: 256", "must be a list of int"),
        ("mlp_hidden_units: [64, 32.5]", "must be a list of int"),
        ("monitor_mode: maximum", "must be one of max, min"),
        ("monitor: {AUC: 1, gAUC: 1}", "'gAUC'"),
        ("embedding_dim: 0", "must be at least 1"),
        (
            "model: Transformer_DCNv2",
            "known models: Transformer_DCN, Transformer_DCN_TA, DIN, DCNv2",
        ),
    ],
)
def test_wrong_types_and_values_are_named(tmp_path, extra, expected):
    d = add_to_block(tmp_path, extra)
    with pytest.raises(ConfigError) as err:
        load_config(d, EXPID)
    assert expected in str(err.value)


def test_int_where_float_expected_is_fine_and_becomes_float(tmp_path):
    cfg = load_config(add_to_block(tmp_path, "net_regularizer: 1\nweight_decay: 0"), EXPID)
    assert cfg.trainer.weight_decay == 0.0 and isinstance(cfg.params["weight_decay"], float)
    assert isinstance(cfg.trainer.net_regularizer, float)


def test_label_col_checks(tmp_path):
    dataset = DATASET_CONFIG.replace(
        "label_col: {name: label, dtype: float}", "label_col: {name: label, dtyp: float}"
    )
    with pytest.raises(ConfigError, match="label_col .* unknown key 'dtyp'; did you mean 'dtype'"):
        load_config(write_config(tmp_path, dataset_config=dataset), EXPID)


# ------------------------------------------------------------------------------- numbers


def test_yaml_scientific_notation_is_float(tmp_path):
    f = tmp_path / "n.yaml"
    f.write_text(
        "a: 1e-3\nb: 1.e-3\nc: 5E-4\nd: 1.5e+2\ne: -2e3\nf: .5\ng: 1_000\nh: '1e-3'\ni: 10\nj: 1e3x\n"
    )
    v = load_yaml(f)
    assert v["a"] == 1e-3 and isinstance(v["a"], float)
    assert v["b"] == 1e-3 and isinstance(v["b"], float)
    assert v["c"] == 5e-4 and v["d"] == 150.0 and v["e"] == -2000.0 and v["f"] == 0.5
    assert v["g"] == 1000 and isinstance(v["g"], int)
    assert v["h"] == "1e-3" and v["i"] == 10 and isinstance(v["i"], int) and v["j"] == "1e3x"
    # plain PyYAML gets this wrong: the reason for the custom loader
    assert yaml.safe_load("a: 1e-3")["a"] == "1e-3"


def test_learning_rate_1e_minus_3_is_a_float(tmp_path):
    cfg = load_config(write_config(tmp_path), "DIN_MicroLens_1M_x1")  # learning_rate: 1e-3
    assert isinstance(cfg.params["learning_rate"], float) and cfg.trainer.learning_rate == 0.001


# ----------------------------------------------------------------------------- overrides


def test_parse_override():
    assert parse_override("learning_rate=5e-4") == ("learning_rate", 5e-4)
    assert parse_override("dcn_hidden_units=[64,32]") == ("dcn_hidden_units", [64, 32])
    assert parse_override("monitor={AUC: 1, logloss: -1}") == ("monitor", {"AUC": 1, "logloss": -1})
    assert parse_override("eval_steps=null") == ("eval_steps", None)
    assert parse_override("batch_norm=True") == ("batch_norm", True)
    assert parse_override("model_root=./ckpt/a=b") == ("model_root", "./ckpt/a=b")
    for bad in ("learning_rate", "=3", "a b=3", "epochs="):
        with pytest.raises(ConfigError, match="--override"):
            parse_override(bad)


def test_overrides_are_applied_validated_and_recorded(tmp_path):
    d = write_config(tmp_path)
    ov = ["learning_rate=5e-4", "dcn_hidden_units=[64,32]", "test_data=./other.parquet"]
    cfg = load_config(d, EXPID, overrides=ov)
    assert cfg.params["learning_rate"] == 5e-4 and cfg.trainer.learning_rate == 5e-4
    assert cfg.params["dcn_hidden_units"] == [64, 32] and cfg.model.dcn_hidden_units == [64, 32]
    assert cfg.dataset.test_data == "./other.parquet"  # overrides beat the dataset block
    assert cfg.overrides == ov
    assert cfg.sources["learning_rate"] == "--override"
    assert cfg.sources["batch_size"].endswith(f":{EXPID}")

    with pytest.raises(ConfigError) as err:
        load_config(d, EXPID, overrides=["learning_rat=5e-4", "batch_size=big"])
    msg = str(err.value)
    assert "'learning_rat' (from --override)" in msg and "did you mean 'learning_rate'" in msg
    assert "'batch_size' (from --override) must be int, got str 'big'" in msg


def test_dataset_id_override_picks_the_dataset_block(tmp_path):
    dataset = DATASET_CONFIG + DATASET_CONFIG.replace("MicroLens_1M_x1:", "Other:", 1).replace(
        "./data/MicroLens_1M_x1/train.parquet", "./data/other/train.parquet"
    )
    d = write_config(tmp_path, dataset_config=dataset)
    cfg = load_config(d, EXPID, overrides=["dataset_id=Other"])
    assert (
        cfg.dataset.dataset_id == "Other" and cfg.dataset.train_data == "./data/other/train.parquet"
    )


# ------------------------------------------------------------------------ experiment ids


def _peer_hash(params: dict) -> str:
    """The peers' id hash: md5 of the *sorted characters* of the params text."""
    return hashlib.md5("".join(sorted(str(params))).encode()).hexdigest()[:8]


def test_permuted_values_between_keys_get_different_ids(tmp_path):
    base = load_config(write_config(tmp_path), EXPID).params
    a = {**base, "batch_size": 128, "dim_feedforward": 256}
    b = {**base, "batch_size": 256, "dim_feedforward": 128}
    assert _peer_hash(a) == _peer_hash(b)  # the peers' collision
    assert make_expid("T", 1, a) != make_expid("T", 2, b)
    assert experiment_hash(a) != experiment_hash(b)
    # every point of a grid gets its own hash
    grid = [{**base, "batch_size": x, "dim_feedforward": y} for x in (128, 256) for y in (128, 256)]
    assert len({experiment_hash(p) for p in grid}) == 4


def test_hash_is_stable_under_key_order_number_spelling_and_run_environment():
    p = {
        "model": "Transformer_DCN",
        "learning_rate": 0.001,
        "batch_size": 128,
        "net_regularizer": 0,
    }
    same = {
        "net_regularizer": 0.0,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "model": "Transformer_DCN",
    }
    assert experiment_hash(p) == experiment_hash(same)
    assert experiment_hash({**p, "learning_rate": 1}) == experiment_hash(
        {**p, "learning_rate": 1.0}
    )
    run_env = {
        "gpu": 3,
        "verbose": 0,
        "num_workers": 8,
        "model_root": "/x",
        "expid": "e",
        "pin_memory": False,
    }
    assert experiment_hash({**p, **run_env, "pickle_feature_encoder": True}) == experiment_hash(p)
    assert hashed_params({**p, **run_env}) == p
    # int fields keep ints: batch_size 128 and 128.0 are different values (the latter is invalid)
    assert experiment_hash({**p, "batch_size": 128.0}) != experiment_hash(p)
    assert experiment_hash({**p, "monitor": {"AUC": 1}}) == experiment_hash(
        {**p, "monitor": {"AUC": 1.0}}
    )
    assert experiment_hash({**p, "batch_norm": True}) != experiment_hash({**p, "batch_norm": 1})
    h = experiment_hash(p)
    assert len(h) == 64 and int(h, 16) >= 0
    assert make_expid("Transformer_DCN_rank1", 7, p) == f"Transformer_DCN_rank1_007_{h[:8]}"
    assert parse_tuner_id(f"Transformer_DCN_rank1_007_{h[:8]}") == (
        "Transformer_DCN_rank1",
        7,
        h[:8],
    )
    assert parse_tuner_id("Transformer_DCN_rank1") is None


def _write_tuner_style_config(tmp_path: Path, params: dict, expid: str) -> Path:
    """What a tuner writes: one block holding the resolved params and the tuner key, plus the
    dataset block."""
    block = {k: v for k, v in params.items() if k not in ("feature_cols", "label_col")}
    block["tuner"] = "config/tuner/grid.yaml"
    d = write_config(tmp_path, yaml.safe_dump({expid: block}, sort_keys=False))
    return d


def test_tuner_id_hash_is_checked_on_load(tmp_path):
    params = load_config(write_config(tmp_path), EXPID).params
    expid = make_expid("Transformer_DCN", 1, params)
    d = _write_tuner_style_config(tmp_path, params, expid)

    cfg = load_config(d, expid)
    assert cfg.hash_check == HASH_OK
    assert load_config(d, expid, overrides=["verbose=0", "gpu=1"]).hash_check == HASH_OK

    # an override that changes the experiment no longer matches its id
    with pytest.raises(ConfigError) as err:
        load_config(d, expid, overrides=["learning_rate=5e-4"])
    msg = str(err.value)
    edited = {**params, "learning_rate": 5e-4}
    assert (
        f"expid {expid} says hash {expid[-8:]} but its parameters hash to {experiment_hash(edited)[:8]}"
        in msg
    )
    assert "--allow-hash-mismatch" in msg

    cfg = load_config(d, expid, overrides=["learning_rate=5e-4"], allow_hash_mismatch=True)
    assert cfg.hash_check == HASH_MISMATCH_ALLOWED
    assert any("says hash" in n for n in cfg.notices)
    assert cfg.to_dict()["_meta"]["hash_check"] == HASH_MISMATCH_ALLOWED

    # a hand edit of the file is caught the same way
    text = (d / "model_config.yaml").read_text().replace("batch_size: 128", "batch_size: 256")
    (d / "model_config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="edited by hand or overridden"):
        load_config(d, expid)


def test_fuxictr_tuner_ids_load_unchanged_with_a_notice(tmp_path):
    """FuxiCTR's tuner writes ids of the same form with its own hash (the first-place
    solution's Transformer_DCN_MicroLens_1M_x1_001_820c435c): no 'tuner' key, not checked."""
    params = load_config(write_config(tmp_path), EXPID).params
    expid = "Transformer_DCN_MicroLens_1M_x1_001_820c435c"
    block = {k: v for k, v in params.items() if k not in ("feature_cols", "label_col")}
    d = write_config(tmp_path, yaml.safe_dump({expid: block}, sort_keys=False))
    cfg = load_config(d, expid)
    assert cfg.hash_check == HASH_FOREIGN
    assert any("not checked" in n and "no 'tuner' key" in n for n in cfg.notices)
    assert cfg.to_dict()["_meta"]["hash_check"] == HASH_FOREIGN
    # a block of an older mmctr tuner (no 'tuner' key) whose hash is right is still checked
    own = make_expid("Transformer_DCN", 1, params)
    d = write_config(tmp_path, yaml.safe_dump({own: block}, sort_keys=False))
    assert load_config(d, own).hash_check == HASH_OK


# ---------------------------------------------------------------------------- round trip


def test_from_dict_round_trip_without_files(tmp_path):
    d = write_config(tmp_path)
    cfg = load_config(d, "DIN_MicroLens_1M_x1", overrides=["epochs=3"])
    saved = cfg.to_dict()
    assert saved["expid"] == cfg.expid and saved["epochs"] == 3
    # through YAML and JSON text, with the config folder gone
    text = yaml.safe_dump(saved, sort_keys=False)
    blob = json.dumps(saved)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    for restored in (
        ExperimentConfig.from_dict(yaml.safe_load(text)),
        ExperimentConfig.from_dict(json.loads(blob)),
    ):
        assert restored == cfg
        assert restored.params == cfg.params and restored.model == cfg.model
        assert restored.trainer == cfg.trainer and restored.dataset == cfg.dataset
        assert restored.sources == cfg.sources and restored.overrides == ["epochs=3"]
        assert restored.notices == cfg.notices and restored.hash_check == cfg.hash_check


def test_from_dict_validates_too():
    with pytest.raises(ConfigError, match="unknown key 'epochz'"):
        build_config(
            "x",
            {
                "model": "DIN",
                "dataset_id": "d",
                "epochz": 3,
                "feature_cols": [{"name": "a", "type": "meta"}],
            },
        )
    with pytest.raises(ConfigError, match="'expid'"):
        ExperimentConfig.from_dict({"model": "DIN"})


# ------------------------------------------------------------------------ shipped configs


def _shipped_config_dirs() -> list[Path]:
    found = {p.parent for p in (REPO / "config").rglob("model_config.yaml")}
    found |= {p.parent for p in (REPO / "config").rglob("model_config") if p.is_dir()}
    return sorted(found)


def test_shipped_configs_exist():
    names = {p.name for p in _shipped_config_dirs()}
    assert {"demo", "MMCTR"} <= names


@pytest.mark.parametrize("config_dir", _shipped_config_dirs(), ids=lambda p: p.name)
def test_every_shipped_expid_validates(config_dir):
    expids = list_expids(config_dir)
    assert expids
    for expid in expids:
        cfg = load_config(config_dir, expid)
        assert cfg.hash_check in (HASH_OK, HASH_NOT_TUNER_ID)
        assert cfg.dataset.feature_cols and cfg.dataset.train_data
    for f in [*config_dir.glob("*_config.yaml"), *config_dir.glob("*_config/*.yaml")]:
        first = f.read_text().lstrip().splitlines()[0]
        assert first.startswith("# python "), f"{f} should start with the command that runs it"


def test_default_demo_experiment_is_small():
    cfg = load_config(REPO / "config" / "demo", "Transformer_DCN_demo")
    assert cfg.dataset.train_data == "./data/demo/train.parquet"
    assert isinstance(cfg.trainer.learning_rate, float) and cfg.trainer.epochs <= 5
    assert cfg.model.embedding_dim <= 32 and cfg.model.transformer_layers == 1


# ----------------------------------------------------------------------------------- CLI


def test_add_experiment_args():
    parser = argparse.ArgumentParser()
    add_experiment_args(parser)
    args = parser.parse_args(["--config", "config/demo", "--expid", "X"])
    assert (args.gpu, args.override, args.allow_hash_mismatch) == (-1, [], False)
    args = parser.parse_args(
        [
            "--config",
            "c",
            "--expid",
            "X",
            "--gpu",
            "1",
            "--override",
            "a=1",
            "--override",
            "b=2",
            "--allow-hash-mismatch",
        ]
    )
    assert (args.gpu, args.override, args.allow_hash_mismatch) == (1, ["a=1", "b=2"], True)
    assert parser.parse_args(["--config", "c", "--expid", "X"]).override == []  # default not shared
    with pytest.raises(SystemExit):
        parser.parse_args(["--expid", "X"])


def test_run_cli_turns_config_errors_into_one_paragraph(tmp_path, capsys):
    d = add_to_block(tmp_path, "dcn_cros_layers: 4")

    def main() -> int:
        load_config(d, EXPID)
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "did you mean 'dcn_cross_layers'" in err
    assert "Traceback" not in err and "\n\n" not in err.strip()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            UserError("no checkpoint for expid X: train it first"),
            "error: no checkpoint for expid X",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "data/x.parquet"),
            "error: No such file or directory: data/x.parquet",
        ),
        (
            DeviceError("--gpu 0 was asked for but CUDA is not available on this machine"),
            "error: --gpu 0 was asked for but CUDA is not available",
        ),
    ],
)
def test_run_cli_user_errors(capsys, exc, expected):
    def main():
        raise exc

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and "Traceback" not in err


def test_run_cli_exit_codes_and_real_bugs():
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: None)
    assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: 3)
    assert exit_info.value.code == 3

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_cli(interrupted)
    assert exit_info.value.code == 130

    def bug():
        raise ZeroDivisionError("a real bug")

    with pytest.raises(ZeroDivisionError):  # keeps its traceback
        run_cli(bug)


def test_run_cli_catches_data_contract_errors(capsys, monkeypatch):
    import sys
    import types

    class DataContractError(ValueError):
        pass

    fake = types.ModuleType("mmctr.data.contract")
    fake.DataContractError = DataContractError
    monkeypatch.setitem(sys.modules, "mmctr.data.contract", fake)

    def main():
        raise DataContractError("train.parquet: column 'item_seq' is missing")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: train.parquet: column 'item_seq' is missing\n"


def test_fuxictr_regulariser_spellings_load_and_bad_ones_are_named(tmp_path):
    from mmctr.config.schema import parse_regularizer

    d = write_config(tmp_path)
    for good in ["l2(1.e-5)", "l1_l2(1e-6, 1e-5)", "1e-5", "0"]:
        cfg = load_config(d, EXPID, overrides=[f"embedding_regularizer={good}"])
        assert parse_regularizer(cfg.trainer.embedding_regularizer) is not None
    assert parse_regularizer("l1_l2(1e-6, 1e-5)") == [(1, 1e-6), (2, 1e-5)]
    assert parse_regularizer(0) == [] and parse_regularizer(None) == []
    for bad in ["l3(1e-5)", "l2(a)", "l1_l2(1e-5)", "-1e-5", "l2(nan)", ".inf"]:
        with pytest.raises(ConfigError, match="net_regularizer.*'l1_l2\\(x, y\\)'"):
            load_config(d, EXPID, overrides=[f"net_regularizer={bad}"])


def test_unknown_metrics_and_data_formats_fail_at_load(tmp_path):
    d = write_config(tmp_path)
    with pytest.raises(ConfigError, match=r"'metrics'.*must be a list of logloss, AUC, gAUC"):
        load_config(d, EXPID, overrides=["metrics=[logloss, auc]"])
    with pytest.raises(ConfigError, match=r"'data_format'.*must be 'parquet'"):
        load_config(d, EXPID, overrides=["data_format=csv"])
    assert load_config(d, EXPID, overrides=["metrics=[logloss, AUC, gAUC]"])


def test_activation_names_and_dcn_structure_are_checked_at_load(tmp_path):
    """A bad choice fails at load (and so under --check), naming the key and its source, before
    a run folder is touched; FuxiCTR's torch.nn class names (``SiLU``) build as there."""
    from torch import nn

    from mmctr.models.layers import get_activation

    d = write_config(tmp_path)
    for key, bad in [("hidden_activations", "bogus"), ("hidden_activations", "silu")]:
        with pytest.raises(
            ConfigError, match=rf"'{key}' \(from --override\) must be an activation"
        ):
            load_config(d, EXPID, overrides=[f"{key}={bad}"])
    for expid in ("DIN_MicroLens_1M_x1",):
        with pytest.raises(ConfigError, match="'dnn_activations'.*got 'bogus'"):
            load_config(d, expid, overrides=["dnn_activations=bogus"])
        with pytest.raises(ConfigError, match="'attention_output_activation'"):
            load_config(d, expid, overrides=["attention_output_activation=sigmod"])
        cfg = load_config(d, expid, overrides=["attention_output_activation=linear"])
        assert cfg.model.attention_output_activation == "linear"
    cfg = load_config(d, EXPID, overrides=["hidden_activations=SiLU"])
    assert isinstance(get_activation(cfg.model.hidden_activations), nn.SiLU)
    assert isinstance(get_activation("ReLU"), nn.ReLU)  # the peers' spelling
    for not_one in ("Module", "MultiheadAttention"):  # torch.nn names that are no activation
        with pytest.raises(ValueError, match=f"unknown activation '{not_one}'"):
            get_activation(not_one)

    dcn = add_to_block(
        tmp_path, "model: DCNv2\nmodel_structure: stacked_paralel", "DIN_MicroLens_1M_x1"
    )
    with pytest.raises(ConfigError, match="'model_structure'.*one of parallel, stacked"):
        load_config(dcn, "DIN_MicroLens_1M_x1", overrides=["dnn_hidden_units=null"])


def test_keys_that_would_do_nothing_are_named(tmp_path):
    d = write_config(tmp_path)
    with pytest.raises(ConfigError, match="'cross_num_experts' .* set cross_low_rank"):
        load_config(d, EXPID, overrides=["cross_num_experts=4"])
    cfg = load_config(d, EXPID, overrides=["cross_num_experts=4", "cross_low_rank=16"])
    assert (cfg.model.cross_low_rank, cfg.model.cross_num_experts) == (16, 4)
    cfg = load_config(d, "DIN_MicroLens_1M_x1", overrides=["hidden_activations=tanh"])
    assert any(
        "'hidden_activations' (from --override) has no effect on DIN" in n for n in cfg.notices
    )
    assert not any("hidden_activations" in n for n in load_config(d, EXPID).notices)


def test_model_defaults_follow_fuxictr():
    """A FuxiCTR config that leaves a key out builds the model FuxiCTR would (FuxiCTR 2.3.7
    model_zoo signatures: DIN, DCNv2)."""
    from mmctr.config.schema import DCNv2Config

    din = DINConfig()
    assert din.embedding_dim == 10 and din.dnn_hidden_units == [512, 128, 64]
    assert (din.attention_hidden_units, din.attention_hidden_activations) == ([64], "Dice")
    assert (din.attention_dropout, din.net_dropout, din.din_use_softmax) == (0, 0, False)
    dcn = DCNv2Config()
    assert (dcn.model_structure, dcn.use_low_rank_mixture, dcn.low_rank) == ("parallel", False, 32)
    assert (dcn.num_experts, dcn.num_cross_layers, dcn.stacked_dnn_hidden_units) == (4, 3, [])
    assert dcn.dnn_activations.lower() == "relu" and dcn.embedding_dim == 10
