"""Loader and batching: file order, seeded batches, exact trimming, max_len, named errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmctr.config.schema import TransformerDCNConfig
from mmctr.data import dataset as dataset_module
from mmctr.data.batching import BatchLoader
from mmctr.data.contract import DataContractError
from mmctr.data.dataset import read_item_table, read_split
from mmctr.models import build_model
from mmctr.training.guard import HostWaits


@pytest.fixture
def loaded(tiny_data, tiny_dataset_config):
    items = read_item_table(tiny_data / "item_info.parquet", tiny_dataset_config)
    train = read_split(
        tiny_data / "train.parquet", tiny_dataset_config, n_items=items.n_items, group_col="user_id"
    )
    return items, train


def test_arrays_match_the_file(tiny_data, loaded):
    items, train = loaded
    table = pq.read_table(tiny_data / "train.parquet")
    seq = np.array(table.column("item_seq").to_pylist())
    assert train.history.values.dtype == np.int32
    assert np.array_equal(train.history.dense(), seq)
    assert len(train.history.values) == int((seq != 0).sum())  # compact: real items only
    assert np.array_equal(train.history.dense(slice(5, 9)), seq[5:9])
    assert np.array_equal(train.columns["item_id"], table.column("item_id").to_numpy())
    assert np.array_equal(train.labels, table.column("label").to_numpy().astype(np.float32))
    assert np.array_equal(train.seq_len, (seq != 0).sum(1))
    info = pq.read_table(tiny_data / "item_info.parquet")
    assert items.n_items == info.num_rows
    emb = np.array(info.column("item_emb_d128").to_pylist(), dtype=np.float32)
    assert np.array_equal(items.features["item_emb_d128"], emb)
    assert items.features["item_emb_d128"].dtype == np.float32


def test_evaluation_batches_are_in_file_order(loaded):
    _, train = loaded
    # a shuffled training pass first must not leak into evaluation order
    shuffled = BatchLoader(train, 300, shuffle=True, seed=3)
    assert not torch.equal(next(iter(shuffled))["index"], torch.arange(300))
    ordered = BatchLoader(train, 300, shuffle=False)
    idx = torch.cat([b["index"] for b in ordered])
    assert torch.equal(idx, torch.arange(train.n_rows))
    ids = torch.cat([b["item_id"] for b in ordered]).numpy()
    assert np.array_equal(ids, train.columns["item_id"])
    # histories rebuilt from the compact store equal the file's rows, shuffled or not
    dense = train.history.dense()
    for loader in (BatchLoader(train, 300, shuffle=True, seed=3, trim_padding=False), ordered):
        for b in loader:
            expect = dense[b["index"].numpy()]
            got = b["item_seq"].numpy()
            assert np.array_equal(got, expect[:, expect.shape[1] - got.shape[1] :])
            assert not expect[:, : expect.shape[1] - got.shape[1]].any()  # only padding dropped


def test_same_seed_same_batches_and_epochs_differ(loaded):
    _, train = loaded

    def first_epoch_indices(seed, epoch=0):
        ld = BatchLoader(train, 256, shuffle=True, seed=seed)
        ld.set_epoch(epoch)
        return torch.cat([b["index"] for b in ld])

    a, b = first_epoch_indices(11), first_epoch_indices(11)
    assert torch.equal(a, b)
    assert not torch.equal(a, first_epoch_indices(12))
    assert not torch.equal(a, first_epoch_indices(11, epoch=1))
    assert torch.equal(torch.sort(a).values, torch.arange(train.n_rows))  # every row once


def test_ranks_split_every_epoch_exactly(loaded):
    _, train = loaded
    parts = []
    for rank in range(2):
        ld = BatchLoader(train, 128, shuffle=True, seed=5, rank=rank, world_size=2)
        parts.append(torch.cat([b["index"] for b in ld]))
    assert len(parts[0]) + len(parts[1]) == train.n_rows
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(train.n_rows))


def test_a_last_batch_too_small_for_two_rows_per_rank_is_folded(loaded):
    """2,000 rows, batch 666 x 3 ranks: the 2-row rest would leave rank 2 nothing and the
    others one row each (BatchNorm cannot train on one): it joins the batch before it."""
    from mmctr.data.batching import batch_sizes

    assert batch_sizes(2000, 1998, 3) == [2000]
    assert batch_sizes(2000, 664 * 3, 3) == [1992, 8]  # 8 rows: 3, 3, 2 per rank
    assert batch_sizes(2000, 1999) == [2000] and batch_sizes(2000, 1998) == [1998, 2]
    assert batch_sizes(1, 256) == [1] and batch_sizes(0, 256) == []
    _, train = loaded
    sizes = [
        [len(b["index"]) for b in BatchLoader(train, 666, shuffle=True, rank=r, world_size=3)]
        for r in range(3)
    ]
    assert sizes == [[667], [667], [666]]
    assert len(BatchLoader(train, 666, world_size=3)) == 1


def test_bucketing_keeps_the_partial_batch_last(loaded):
    """Length bucketing shuffles whole batches; the partial one stays last, so every batch
    is one cut of gb rows (not straddling two buckets) and the trainer's windows hold."""
    _, train = loaded
    ld = BatchLoader(train, 96, shuffle=True, seed=3, bucket_by_length=True)
    batches = list(ld)
    assert [len(b["index"]) for b in batches] == [96] * 20 + [80]
    order = ld._order()
    cuts = torch.cat([b["index"] for b in batches])
    assert torch.equal(cuts, order)
    spread = [
        int((b["item_seq"] != 0).sum(1).max() - (b["item_seq"] != 0).sum(1).min())
        for b in batches[:-1]
    ]
    # sorted within 50-batch windows, each batch spans a narrow range of lengths (batches
    # cut across the shuffled partial batch mixed lengths 5..24 here before)
    assert max(spread) < 10


def test_bucketing_keeps_every_row_once(loaded):
    _, train = loaded
    ld = BatchLoader(train, 64, shuffle=True, seed=1, bucket_by_length=True)
    idx = torch.cat([b["index"] for b in ld])
    assert torch.equal(torch.sort(idx).values, torch.arange(train.n_rows))


@pytest.mark.parametrize("on_device", [False, True])
def test_a_batch_is_built_without_reading_device_values(loaded, on_device):
    """Width and item count come from the host copy of the lengths: with the store on a GPU
    (on_device) nothing in gather would make the host wait for it."""
    _, train = loaded
    ld = BatchLoader(train, 256, shuffle=True, min_seq_len=3, on_device=on_device)
    idx = torch.randperm(train.n_rows)[:256]
    with HostWaits() as waits:
        batch = ld.gather(idx)
    assert waits.total == 0, dict(waits.ops)
    lengths = (batch["item_seq"] != 0).sum(1)
    assert batch["item_seq"].shape[1] == max(int(lengths.max()), 3)  # trimmed all the same
    assert torch.equal(lengths, torch.from_numpy(train.seq_len[idx.numpy()]).long())


def test_trimming_is_bit_identical_in_eval_mode(tiny_dataset_config, loaded):
    items, train = loaded
    torch.manual_seed(0)
    cfg = TransformerDCNConfig(
        embedding_dim=8,
        num_heads=2,
        transformer_layers=1,
        dim_feedforward=16,
        first_k_cols=3,
        dcn_cross_layers=1,
        dcn_hidden_units=[16],
        mlp_hidden_units=[8],
    )
    model = build_model(cfg, tiny_dataset_config, items).eval()
    trimmed = BatchLoader(train, 200, min_seq_len=3, trim_padding=True)
    full = BatchLoader(train, 200, min_seq_len=3, trim_padding=False)
    saw_trim = False
    with torch.no_grad():
        for bt, bf in zip(trimmed, full):
            saw_trim |= bt["item_seq"].shape[1] < bf["item_seq"].shape[1]
            assert bt["item_seq"].shape[1] >= 3
            assert torch.equal(model(bt), model(bf))
    assert saw_trim


def test_max_len_keeps_the_most_recent_items(tiny_data, tiny_dataset_config, loaded):
    items, train = loaded
    short = read_split(
        tiny_data / "train.parquet", tiny_dataset_config, n_items=items.n_items, max_len=5
    )
    assert short.seq_width == 5
    assert np.array_equal(short.history.dense(), train.history.dense()[:, -5:])
    assert np.array_equal(short.seq_len, np.minimum(train.seq_len, 5))


def _rewrite(path, column, fn):
    table = pq.read_table(path)
    i = table.column_names.index(column)
    table = table.set_column(i, column, fn(table.column(column)))
    pq.write_table(table, path)


def test_malformed_files_fail_with_named_messages(tiny_data_copy, tiny_dataset_config):
    from mmctr.data.contract import microlens_dataset_config

    ds = microlens_dataset_config(tiny_data_copy, dataset_id="tiny")
    items = read_item_table(tiny_data_copy / "item_info.parquet", ds)
    train = tiny_data_copy / "train.parquet"
    # item id out of range
    _rewrite(train, "item_id", lambda c: pa.array(np.full(len(c), 10_000, dtype=np.int64)))
    with pytest.raises(DataContractError) as e:
        read_split(train, ds, n_items=items.n_items)
    assert "train.parquet" in str(e.value) and "item_id" in str(e.value)
    # missing column
    table = pq.read_table(tiny_data_copy / "valid.parquet").drop(["likes_level"])
    pq.write_table(table, tiny_data_copy / "valid.parquet")
    with pytest.raises(DataContractError) as e:
        read_split(tiny_data_copy / "valid.parquet", ds, n_items=items.n_items)
    assert "valid.parquet" in str(e.value) and "likes_level" in str(e.value)
    # missing file
    with pytest.raises(DataContractError) as e:
        read_split(tiny_data_copy / "nope.parquet", ds, n_items=items.n_items)
    assert "nope.parquet" in str(e.value)


def _with_feature(ds, name, **changes):
    cols = [dataclasses.replace(f, **changes) if f.name == name else f for f in ds.feature_cols]
    return dataclasses.replace(ds, feature_cols=cols)


@pytest.mark.parametrize(
    "placeholder",
    [
        lambda n: pa.array(np.zeros(n, dtype=np.int64)),  # all 0: one class only
        lambda n: pa.array(np.full(n, -1)),
        lambda n: pa.array([""] * n),  # not numeric
        lambda n: pa.nulls(n, pa.int64()),
        lambda n: pa.nulls(n),
    ],
)
def test_a_placeholder_test_label_is_no_label(tiny_data_copy, tiny_dataset_config, placeholder):
    test = tiny_data_copy / "test.parquet"
    _rewrite(test, "label", lambda c: placeholder(len(c)))
    split = read_split(test, tiny_dataset_config, n_items=300, require_label=False)
    assert split.labels is None and split.n_rows == 500


def test_real_test_labels_are_kept_and_train_labels_stay_strict(
    tiny_data_copy, tiny_dataset_config
):
    test = tiny_data_copy / "test.parquet"
    split = read_split(test, tiny_dataset_config, n_items=300, require_label=False)
    expect = pq.read_table(test).column("label").to_numpy().astype(np.float32)
    assert np.array_equal(split.labels, expect)
    _rewrite(test, "label", lambda c: pa.array(np.zeros(len(c), dtype=np.int64)))
    split = read_split(test, tiny_dataset_config, n_items=300, require_label=True)
    assert split.labels is not None and not split.labels.any()  # all-0 train labels are labels
    _rewrite(test, "label", lambda c: pa.array([""] * len(c)))
    with pytest.raises(DataContractError, match=r"test\.parquet: column 'label': wrong type"):
        read_split(test, tiny_dataset_config, n_items=300, require_label=True)


def test_an_inactive_history_is_still_checked(tiny_data_copy, tiny_dataset_config):
    valid = tiny_data_copy / "valid.parquet"

    def bad_item(col):
        seq = col.to_pylist()
        seq[3][-1] = 999_999
        return pa.array(seq, type=pa.list_(pa.int64()))

    _rewrite(valid, "item_seq", bad_item)
    ds = _with_feature(tiny_dataset_config, "item_seq", active=False)
    with pytest.raises(DataContractError, match=r"'item_seq': item ids must be in 0\.\.299"):
        read_split(valid, ds, n_items=300)


def test_a_per_row_sequence_feature_is_refused_by_name(tiny_data, tiny_dataset_config):
    ds = _with_feature(
        tiny_dataset_config, "item_seq", type="sequence", max_len=100, vocab_size=300
    )
    with pytest.raises(DataContractError) as e:
        read_split(tiny_data / "valid.parquet", ds, n_items=300)
    msg = str(e.value)
    assert "feature 'item_seq'" in msg and "categorical or numeric" in msg
    assert "`type: meta`" in msg


def test_a_missing_group_column_names_group_id(tiny_data, tiny_dataset_config):
    with pytest.raises(DataContractError) as e:
        read_split(tiny_data / "valid.parquet", tiny_dataset_config, n_items=300, group_col="uid")
    msg = str(e.value)
    assert "valid.parquet: column 'uid' is missing" in msg and "group_id" in msg


def test_an_unreadable_file_names_its_path(tiny_data_copy, tiny_dataset_config):
    for name in ("item_info", "valid"):
        p = tiny_data_copy / f"{name}.parquet"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataContractError, match=r"item_info\.parquet: cannot be read as parquet"):
        read_item_table(tiny_data_copy / "item_info.parquet", tiny_dataset_config)
    with pytest.raises(DataContractError, match=r"valid\.parquet: cannot be read as parquet"):
        read_split(tiny_data_copy / "valid.parquet", tiny_dataset_config, n_items=300)


def test_a_null_first_history_row_is_a_contract_error(tiny_data_copy, tiny_dataset_config):
    valid = tiny_data_copy / "valid.parquet"

    def null_row0(col):
        seq = col.to_pylist()
        seq[0] = None
        return pa.array(seq, type=pa.list_(pa.int64()))

    _rewrite(valid, "item_seq", null_row0)
    with pytest.raises(DataContractError) as e:
        read_split(valid, tiny_dataset_config, n_items=300)
    assert e.value.problems == [
        f"{valid}: column 'item_seq': null entries (expected a value in every row); "
        "1 of 500 rows fail, first at row 0"
    ]


def test_row_numbers_count_from_the_file_start(tiny_data_copy, tiny_dataset_config, monkeypatch):
    monkeypatch.setattr(dataset_module, "_READ_BATCH_ROWS", 256)
    train = tiny_data_copy / "train.parquet"

    def bad_ids(col):
        v = col.to_numpy().copy()
        v[[700, 701, 1500]] = 5000
        return pa.array(v)

    _rewrite(train, "item_id", bad_ids)
    with pytest.raises(DataContractError) as e:
        read_split(train, tiny_dataset_config, n_items=300)
    msg = str(e.value)
    assert "3 of 2000 rows fail, first at row 700" in msg and "relative" not in msg


def test_bucketing_shuffles_every_batch_when_all_are_full(loaded):
    _, train = loaded
    ld = BatchLoader(train, 100, shuffle=True, seed=3, bucket_by_length=True)  # 20 x 100
    last_is_longest = []
    for epoch in range(4):
        ld.set_epoch(epoch)
        longest = [int((b["item_seq"] != 0).sum(1).max()) for b in ld]
        last_is_longest.append(longest[-1] == max(longest))
    assert not all(last_is_longest)  # the longest batch is not pinned last
