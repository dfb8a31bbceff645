"""The data-contract validator: every invariant broken once, on copies of the tiny data."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmctr.data.contract import (
    DataContractError,
    check_item_info_table,
    check_split_table,
    microlens_dataset_config,
    validate_dataset,
)

FILES = ("train", "valid", "test", "item_info")


def _matrix(table: pa.Table, col: str) -> np.ndarray:
    arr = table.column(col).combine_chunks()
    return arr.flatten().to_numpy().reshape(table.num_rows, -1).copy()


def _lists(mat: np.ndarray, value_type: pa.DataType) -> pa.Array:
    flat = pa.array(mat.reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, mat.shape[1]).cast(pa.list_(value_type))


def _ragged(rows: list[list], value_type: pa.DataType) -> pa.Array:
    return pa.array(rows, type=pa.list_(value_type))


def _replace(table: pa.Table, col: str, arr: pa.Array) -> pa.Table:
    i = table.column_names.index(col)
    return table.set_column(i, pa.field(col, arr.type), arr)


@pytest.fixture(scope="module")
def tables(tiny_data) -> dict[str, pa.Table]:
    return {name: pq.read_table(tiny_data / f"{name}.parquet") for name in FILES}


def _write_dataset(tmp_path: Path, tables: dict[str, pa.Table], **replace: pa.Table | None) -> Path:
    """A copy of the tiny data with some tables replaced (None = file left out)."""
    d = tmp_path / "data"
    d.mkdir()
    for name in FILES:
        table = replace.get(name, tables[name])
        if table is not None:
            pq.write_table(table, d / f"{name}.parquet")
    return d


def _problems(d: Path, **kwargs) -> list[str]:
    with pytest.raises(DataContractError) as exc:
        validate_dataset(microlens_dataset_config(d, dataset_id="tiny"), **kwargs)
    err = exc.value
    assert isinstance(err, ValueError)
    text = str(err)
    assert "\n" not in text  # one readable paragraph ...
    for p in err.problems:  # ... that lists every problem
        assert p.rstrip(".") in text
    return err.problems


def _one(problems: list[str], *needles: str) -> str:
    hits = [p for p in problems if all(n in p for n in needles)]
    assert len(hits) == 1, (needles, problems)
    return hits[0]


# ------------------------------------------------------------------------------------ config


def test_microlens_config_matches_the_contract(tiny_data, tmp_path):
    cfg = microlens_dataset_config(tiny_data, dataset_id="tiny")
    assert cfg.dataset_id == "tiny" and cfg.data_format == "parquet"
    assert cfg.train_data == str(tiny_data / "train.parquet")
    assert cfg.valid_data == str(tiny_data / "valid.parquet")
    assert cfg.test_data == str(tiny_data / "test.parquet")
    assert cfg.item_info == str(tiny_data / "item_info.parquet")
    f = {x.name: x for x in cfg.feature_cols}
    assert list(f) == [
        "user_id",
        "item_seq",
        "likes_level",
        "views_level",
        "item_id",
        "item_tags",
        "item_emb_d128",
    ]
    assert f["user_id"].type == "meta" and f["item_seq"].type == "meta"
    assert f["likes_level"].type == "categorical" and f["likes_level"].vocab_size == 11
    assert f["views_level"].vocab_size == 11
    assert f["item_id"].vocab_size == 300 and f["item_id"].source == "item"
    assert (f["item_tags"].type, f["item_tags"].max_len, f["item_tags"].vocab_size) == (
        "sequence",
        5,
        11740,
    )
    assert f["item_emb_d128"].type == "embedding" and f["item_emb_d128"].embedding_dim == 128
    assert f["item_emb_d128"].dtype == "float" and f["item_emb_d128"].source == "item"
    assert cfg.label_col.name == "label" and cfg.label_col.dtype == "float"
    assert [x.name for x in cfg.item_features] == ["item_id", "item_tags", "item_emb_d128"]
    assert [x.name for x in cfg.side_features] == ["likes_level", "views_level"]
    # without item_info the real MicroLens vocabulary
    assert microlens_dataset_config(tmp_path).feature("item_id").vocab_size == 91718


def test_clean_data_passes(tiny_dataset_config, tables):
    validate_dataset(tiny_dataset_config, require_test_label=True)
    assert check_item_info_table(tables["item_info"], "x", tiny_dataset_config) == []
    for name in ("train", "valid", "test"):
        assert (
            check_split_table(
                tables[name], "x", tiny_dataset_config, n_items=300, require_label=True
            )
            == []
        )


# -------------------------------------------------------------------------- one per invariant


def test_missing_file(tmp_path, tables):
    d = _write_dataset(tmp_path, tables, valid=None)
    msg = _one(_problems(d), "valid.parquet")
    assert "file not found" in msg


def test_missing_item_info_file(tmp_path, tables):
    d = _write_dataset(tmp_path, tables, item_info=None)
    assert "item_info" in _one(_problems(d), "item_info.parquet", "file not found")


def test_missing_column(tmp_path, tables):
    d = _write_dataset(tmp_path, tables, train=tables["train"].drop_columns(["likes_level"]))
    msg = _one(_problems(d), "train.parquet", "'likes_level'")
    assert "missing" in msg


def test_missing_label(tmp_path, tables):
    d = _write_dataset(tmp_path, tables, valid=tables["valid"].drop_columns(["label"]))
    assert "missing" in _one(_problems(d), "valid.parquet", "'label'")


def test_wrong_tag_list_length(tmp_path, tables):
    info = tables["item_info"]
    rows = info["item_tags"].to_pylist()
    rows[7] = rows[7][1:]  # 4 entries instead of 5
    d = _write_dataset(
        tmp_path, tables, item_info=_replace(info, "item_tags", _ragged(rows, pa.int64()))
    )
    msg = _one(_problems(d), "item_info.parquet", "'item_tags'")
    assert (
        "length 5" in msg
        and "1 of 300 rows" in msg
        and "first at row 7" in msg
        and "length 4" in msg
    )


def test_wrong_embedding_length(tmp_path, tables):
    info = tables["item_info"]
    emb = _matrix(info, "item_emb_d128")[:, :64]
    d = _write_dataset(
        tmp_path, tables, item_info=_replace(info, "item_emb_d128", _lists(emb, pa.float32()))
    )
    msg = _one(_problems(d), "item_info.parquet", "'item_emb_d128'")
    assert "length 128" in msg and "300 of 300 rows" in msg and "first at row 0" in msg


def test_history_length_not_constant(tmp_path, tables):
    train = tables["train"]
    rows = train["item_seq"].to_pylist()
    rows[11] = rows[11][1:]  # 99 entries
    d = _write_dataset(
        tmp_path, tables, train=_replace(train, "item_seq", _ragged(rows, pa.int64()))
    )
    msg = _one(_problems(d), "train.parquet", "'item_seq'")
    assert "same number of entries" in msg and "first at row 11" in msg and "length 99" in msg


def test_target_item_id_out_of_range(tmp_path, tables):
    train = tables["train"]
    item = train["item_id"].to_numpy().copy()
    item[3] = 300  # == n_items: no such row in item_info
    item[9] = 0  # padding is not a valid target
    d = _write_dataset(tmp_path, tables, train=_replace(train, "item_id", pa.array(item)))
    msg = _one(_problems(d), "train.parquet", "'item_id'")
    assert (
        "1..299" in msg
        and "2 of 2000 rows" in msg
        and "first at row 3" in msg
        and "value 300" in msg
    )


def test_history_item_out_of_range(tmp_path, tables):
    valid = tables["valid"]
    seq = _matrix(valid, "item_seq")
    seq[5, -1] = 12345
    d = _write_dataset(tmp_path, tables, valid=_replace(valid, "item_seq", _lists(seq, pa.int64())))
    msg = _one(_problems(d), "valid.parquet", "'item_seq'")
    assert "0..299" in msg and "first at row 5" in msg and "12345" in msg


def test_tag_out_of_vocab(tmp_path, tables):
    info = tables["item_info"]
    tags = _matrix(info, "item_tags")
    tags[4, -1] = 11740
    d = _write_dataset(
        tmp_path, tables, item_info=_replace(info, "item_tags", _lists(tags, pa.int64()))
    )
    msg = _one(_problems(d), "item_info.parquet", "'item_tags'")
    assert "0..11739" in msg and "first at row 4" in msg


def test_level_out_of_vocab(tmp_path, tables):
    test = tables["test"]
    v = test["views_level"].to_numpy().copy()
    v[2] = 11
    d = _write_dataset(tmp_path, tables, test=_replace(test, "views_level", pa.array(v)))
    msg = _one(_problems(d), "test.parquet", "'views_level'")
    assert "0..10" in msg and "first at row 2" in msg


def test_item_info_row_index_differs_from_item_id(tmp_path, tables):
    info = tables["item_info"]
    ids = info["item_id"].to_numpy().copy()
    ids[[5, 6]] = ids[[6, 5]]
    d = _write_dataset(tmp_path, tables, item_info=_replace(info, "item_id", pa.array(ids)))
    msg = _one(_problems(d), "item_info.parquet", "'item_id'")
    assert "row index" in msg and "2 of 300 rows" in msg and "first at row 5" in msg


@pytest.mark.parametrize("col", ["item_tags", "item_emb_d128"])
def test_non_zero_padding_row(tmp_path, tables, col):
    info = tables["item_info"]
    mat = _matrix(info, col)
    mat[0, -1] = 1
    vt = pa.int64() if col == "item_tags" else pa.float32()
    d = _write_dataset(tmp_path, tables, item_info=_replace(info, col, _lists(mat, vt)))
    msg = _one(_problems(d), "item_info.parquet", f"'{col}'")
    assert "padding row 0" in msg and "first at row 0" in msg


def test_label_not_binary(tmp_path, tables):
    valid = tables["valid"]
    y = valid["label"].to_numpy().copy()
    y[7] = 2
    y[8] = -1
    d = _write_dataset(tmp_path, tables, valid=_replace(valid, "label", pa.array(y)))
    msg = _one(_problems(d), "valid.parquet", "'label'")
    assert (
        "0 or 1" in msg and "2 of 500 rows" in msg and "first at row 7" in msg and "value 2" in msg
    )


def test_test_label_placeholder_is_only_checked_on_request(tmp_path, tables):
    test = tables["test"]
    d = _write_dataset(
        tmp_path, tables, test=_replace(test, "label", pa.array(np.full(test.num_rows, -1)))
    )
    validate_dataset(microlens_dataset_config(d))  # hidden test labels: placeholder accepted
    assert "0 or 1" in _one(_problems(d, require_test_label=True), "test.parquet", "'label'")
    d2 = tmp_path / "no_label"
    shutil.copytree(d, d2)
    pq.write_table(test.drop_columns(["label"]), d2 / "test.parquet")
    validate_dataset(microlens_dataset_config(d2))
    assert "missing" in _one(_problems(d2, require_test_label=True), "test.parquet", "'label'")


def test_nan_in_embedding(tmp_path, tables):
    info = tables["item_info"]
    emb = _matrix(info, "item_emb_d128")
    emb[10, 3] = np.nan
    emb[20, 0] = np.inf
    d = _write_dataset(
        tmp_path, tables, item_info=_replace(info, "item_emb_d128", _lists(emb, pa.float32()))
    )
    msg = _one(_problems(d), "item_info.parquet", "'item_emb_d128'")
    assert "NaN/inf" in msg and "2 of 300 rows" in msg and "first at row 10" in msg


@pytest.mark.parametrize(
    "name,col,cast,expected",
    [
        ("train", "item_seq", pa.list_(pa.float64()), "list of integers"),
        ("item_info", "item_emb_d128", pa.list_(pa.int64()), "list of floats"),
        ("valid", "likes_level", pa.float64(), "integer"),
        ("item_info", "item_tags", pa.int64(), "list of integers"),
    ],
)
def test_wrong_dtype(tmp_path, tables, name, col, cast, expected):
    t = tables[name]
    if col == "item_tags":  # not a list at all
        arr = pa.array(np.arange(t.num_rows))
    else:
        arr = t[col].cast(cast, safe=False)
    d = _write_dataset(tmp_path, tables, **{name: _replace(t, col, arr)})
    msg = _one(_problems(d), f"{name}.parquet", f"'{col}'")
    found = arr.type.value_type if pa.types.is_list(arr.type) else arr.type
    assert (
        "wrong type" in msg
        and expected in msg
        and f"found {'list<element: ' if pa.types.is_list(arr.type) else ''}{found}" in msg
    )


def test_history_not_left_padded(tmp_path, tables):
    train = tables["train"]
    seq = _matrix(train, "item_seq")
    seq[13] = seq[13][::-1]  # right-padded
    seq[40, -1] = 0  # a hole at the most recent position
    d = _write_dataset(tmp_path, tables, train=_replace(train, "item_seq", _lists(seq, pa.int64())))
    msg = _one(_problems(d), "train.parquet", "'item_seq'")
    assert "left-padded" in msg and "2 of 2000 rows" in msg and "first at row 13" in msg


def test_nulls_are_reported(tmp_path, tables):
    train = tables["train"]
    item = train["item_id"].to_pylist()
    item[4] = None
    d = _write_dataset(
        tmp_path, tables, train=_replace(train, "item_id", pa.array(item, pa.int64()))
    )
    problems = _problems(d)
    assert "first at row 4" in _one(problems, "train.parquet", "'item_id'", "null entries")
    assert len(problems) == 1  # a null is not also reported as out of range


def test_every_problem_of_every_file_is_listed(tmp_path, tables):
    info = tables["item_info"]
    emb = _matrix(info, "item_emb_d128")
    emb[0, 0] = 0.5
    y = tables["valid"]["label"].to_numpy().copy()
    y[0] = 3
    d = _write_dataset(
        tmp_path,
        tables,
        item_info=_replace(info, "item_emb_d128", _lists(emb, pa.float32())),
        valid=_replace(tables["valid"], "label", pa.array(y)),
        train=tables["train"].drop_columns(["views_level"]),
        test=None,
    )
    problems = _problems(d)
    assert len(problems) == 4
    _one(problems, "item_info.parquet", "padding row 0")
    _one(problems, "valid.parquet", "'label'")
    _one(problems, "train.parquet", "'views_level'", "missing")
    _one(problems, "test.parquet", "file not found")
    err = DataContractError(problems)
    assert str(err).startswith("Data contract violated (4 problems)")
    assert err.problems == problems


def test_row_numbers_count_across_chunks(tiny_dataset_config, tables):
    train = tables["train"]
    seq = _matrix(train, "item_seq")
    seq[1500, -1] = 999
    t = _replace(train, "item_seq", _lists(seq, pa.int64()))
    chunked = pa.concat_tables([t.slice(0, 700), t.slice(700, 600), t.slice(1300)])
    assert chunked.column("item_seq").num_chunks == 3
    problems = check_split_table(
        chunked, "mem", tiny_dataset_config, n_items=300, require_label=True
    )
    assert len(problems) == 1
    assert "first at row 1500" in problems[0] and "1 of 2000 rows" in problems[0]


def test_split_check_uses_vocab_size_without_n_items(tiny_dataset_config, tables):
    train = tables["train"]
    item = train["item_id"].to_numpy().copy()
    item[0] = 300
    t = _replace(train, "item_id", pa.array(item))
    problems = check_split_table(t, "mem", tiny_dataset_config, n_items=None, require_label=True)
    assert len(problems) == 1 and "1..299" in problems[0]


def test_item_table_larger_than_vocab(tables):
    cfg = microlens_dataset_config("/nonexistent")  # vocab 91718
    big = {f.name: f for f in cfg.feature_cols}
    assert big["item_id"].vocab_size == 91718
    small = microlens_dataset_config("/nonexistent")
    cols = [
        type(f)(**{**f.__dict__, "vocab_size": 100}) if f.name == "item_id" else f
        for f in small.feature_cols
    ]
    small = dataclasses.replace(small, feature_cols=cols)  # config objects are frozen
    problems = check_item_info_table(tables["item_info"], "info", small)
    assert len(problems) == 1 and "vocab_size 100" in problems[0] and "300 item rows" in problems[0]


@pytest.mark.parametrize(
    "list_type", [pa.list_(pa.int64(), 100), pa.large_list(pa.int64()), pa.list_(pa.int32())]
)
def test_other_list_layouts_are_accepted(tiny_dataset_config, tables, list_type):
    train = tables["train"]
    seq = train["item_seq"].cast(list_type)
    t = _replace(train, "item_seq", seq).slice(100, 1500)  # a sliced view keeps its offsets
    assert check_split_table(t, "mem", tiny_dataset_config, n_items=300, require_label=True) == []
    bad = _matrix(train, "item_seq")
    bad[120, 0] = 5  # row 120 -> row 20 of the slice: a real item before the padding
    t = _replace(train, "item_seq", _lists(bad, pa.int64()).cast(list_type)).slice(100, 1500)
    problems = check_split_table(t, "mem", tiny_dataset_config, n_items=300, require_label=True)
    assert len(problems) == 1 and "left-padded" in problems[0] and "first at row 20" in problems[0]


def _with_feature(cfg, name: str, **changes):
    cols = [dataclasses.replace(f, **changes) if f.name == name else f for f in cfg.feature_cols]
    return dataclasses.replace(cfg, feature_cols=cols)


def test_the_history_is_checked_even_when_inactive(tmp_path, tables):
    valid = tables["valid"]
    seq = _matrix(valid, "item_seq")
    seq[5, -1] = 12345
    d = _write_dataset(tmp_path, tables, valid=_replace(valid, "item_seq", _lists(seq, pa.int64())))
    cfg = _with_feature(microlens_dataset_config(d), "item_seq", active=False)
    with pytest.raises(DataContractError) as e:
        validate_dataset(cfg, splits=["valid"])
    msg = _one(e.value.problems, "valid.parquet", "'item_seq'")
    assert "0..299" in msg and "first at row 5" in msg


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "sequence", "max_len": 100, "vocab_size": 300},
        {"type": "embedding", "dtype": "float", "embedding_dim": 100},
    ],
)
def test_a_per_row_list_feature_is_a_config_problem(tiny_dataset_config, changes):
    cfg = _with_feature(tiny_dataset_config, "item_seq", **changes)
    with pytest.raises(DataContractError) as e:
        validate_dataset(cfg)
    msg = _one(e.value.problems, "feature 'item_seq'")  # once, not once per split
    assert "categorical or numeric" in msg and "`type: meta`" in msg
    cfg = _with_feature(tiny_dataset_config, "item_seq", type="categorical", vocab_size=300)
    with pytest.raises(DataContractError) as e:
        validate_dataset(cfg)
    assert "`type: meta` (found type categorical)" in _one(e.value.problems, "'item_seq'")


def test_the_group_column_is_checked(tmp_path, tables, tiny_dataset_config):
    validate_dataset(tiny_dataset_config, group_col="user_id")
    with pytest.raises(DataContractError) as e:
        validate_dataset(tiny_dataset_config, group_col="uid")
    assert len(e.value.problems) == 3  # every split
    msg = _one(e.value.problems, "valid.parquet", "column 'uid' is missing")
    assert "group_id" in msg
    test = tables["test"]
    test = test.append_column("session", pa.array(["s"] * test.num_rows))
    d = _write_dataset(tmp_path, tables, test=test)
    problems = _problems(d, splits=["test"], group_col="session")
    assert "expected an integer column" in _one(problems, "test.parquet", "'session'")


def test_a_null_history_row_is_reported_once(tmp_path, tables):
    valid = tables["valid"]
    rows = valid["item_seq"].to_pylist()
    rows[0] = None
    d = _write_dataset(
        tmp_path, tables, valid=_replace(valid, "item_seq", _ragged(rows, pa.int64()))
    )
    problems = _problems(d, splits=["valid"])
    assert problems == [
        f"{d / 'valid.parquet'}: column 'item_seq': null entries (expected a value in every "
        "row); 1 of 500 rows fail, first at row 0"
    ]  # not also "every row must hold the same number of entries (row 0 has 0)"
