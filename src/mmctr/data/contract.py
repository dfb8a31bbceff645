"""The data contract (DATA_CONTRACT.md) as code: the MicroLens dataset config and a validator.

:func:`microlens_dataset_config` builds the ``DatasetConfig`` every top solution uses for
MicroLens_1M_x1; :func:`validate_dataset` reads the files it names and raises one
:class:`DataContractError` that lists EVERY problem found (missing files and columns, wrong
types, wrong list lengths, ids out of range, a bad padding row, labels that are not 0/1,
NaN/inf embeddings, histories that are not left-padded). Each message names the file and the
column, says what was expected and what was found, how many rows fail and the first one.

The checks are vectorised over the flat value buffers of the list columns (numpy on
``ListArray.values``), record batch by record batch, so validating the 3.6M-row train split
costs about as much as reading it. :func:`check_item_info_table` and :func:`check_split_table`
are the building blocks the loader calls on tables / record batches it has already read.

Run ``python -m mmctr.data.contract DATA_DIR`` to check a MicroLens-shaped folder.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmctr.columns import HISTORY_COL
from mmctr.config.schema import (  # noqa: F401 (check_feature_config: re-exported)
    DatasetConfig,
    FeatureSpec,
    LabelSpec,
    check_feature_config,
)

MICROLENS_N_ITEMS = 91_718
MICROLENS_TAG_VOCAB = 11_740
MICROLENS_EMB_DIM = 128
MICROLENS_SEQ_LEN = 100
_CHECK_ROWS = 262_144  # rows per vectorised step (bounds temporary memory)
_SCRATCH = threading.local()


class DataContractError(ValueError):
    """Input data that breaks the data contract. ``problems`` lists every violation found."""

    def __init__(self, problems: Iterable[str] | str):
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self._paragraph())

    def _paragraph(self) -> str:
        n = len(self.problems)
        if n == 1:
            return f"Data contract violated: {self.problems[0]}"
        body = " ".join(f"({i}) {p.rstrip('.')}." for i, p in enumerate(self.problems, 1))
        return f"Data contract violated ({n} problems): {body}"

    def __str__(self) -> str:
        return self._paragraph()


# ------------------------------------------------------------------------------ the config


def microlens_dataset_config(
    data_dir: str | os.PathLike, dataset_id: str = "MicroLens_1M_x1"
) -> DatasetConfig:
    """The MicroLens_1M_x1 feature config of DATA_CONTRACT.md for the files in ``data_dir``.

    ``item_id``'s vocab_size is the number of rows of ``data_dir/item_info.parquet`` when that
    file exists (read from the parquet footer only), else 91,718. ``data_root`` is the parent
    of ``data_dir`` (FuxiCTR's ``data_root/dataset_id`` layout); the four data paths point
    into ``data_dir``.
    """
    d = Path(data_dir)
    n_items = MICROLENS_N_ITEMS
    info = d / "item_info.parquet"
    if info.is_file():
        # an unreadable file keeps the default; validate_dataset reports it
        with contextlib.suppress(OSError, pa.ArrowException):
            n_items = pq.read_metadata(info).num_rows
    features = [
        FeatureSpec("user_id", "meta", dtype="int"),
        FeatureSpec("item_seq", "meta", dtype="int"),
        FeatureSpec("likes_level", "categorical", dtype="int", vocab_size=11),
        FeatureSpec("views_level", "categorical", dtype="int", vocab_size=11),
        FeatureSpec("item_id", "categorical", dtype="int", vocab_size=n_items, source="item"),
        FeatureSpec(
            "item_tags",
            "sequence",
            dtype="int",
            max_len=5,
            vocab_size=MICROLENS_TAG_VOCAB,
            source="item",
        ),
        FeatureSpec(
            "item_emb_d128",
            "embedding",
            dtype="float",
            source="item",
            embedding_dim=MICROLENS_EMB_DIM,
        ),
    ]
    return DatasetConfig(
        dataset_id=dataset_id,
        data_root=str(d.parent),
        data_format="parquet",
        train_data=str(d / "train.parquet"),
        valid_data=str(d / "valid.parquet"),
        test_data=str(d / "test.parquet"),
        item_info=str(d / "item_info.parquet"),
        rebuild_dataset=False,
        feature_cols=features,
        label_col=LabelSpec("label", "float"),
    )


# ------------------------------------------------------------------------------- helpers


def item_id_feature(dataset: DatasetConfig) -> FeatureSpec | None:
    """The item-side categorical feature that is the item id (``item_id`` in the contract)."""
    cands = [f for f in dataset.item_features if f.type == "categorical"]
    for f in cands:
        if f.name == "item_id":
            return f
    return cands[0] if cands else None


def history_columns(dataset: DatasetConfig) -> list[str]:
    """Per-row item-id histories: ``item_seq``, which the loader and the models always read
    (whatever its ``active`` flag says), and any other active ``meta`` feature named ``*_seq``."""
    names = [HISTORY_COL]
    for f in dataset.active_features:
        if f.type == "meta" and f.name.endswith("_seq") and f.name not in names:
            names.append(f.name)
    return names


def _list_value_type(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """A list array chunk -> (offsets (n+1,) counted from 0, its flat values as an Arrow array)."""
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        values = arr.values.slice(arr.offset * size, n * size)
        offsets = np.arange(n + 1, dtype=np.int64) * size
    else:
        offs = arr.offsets.to_numpy().astype(np.int64, copy=False)
        values = arr.values.slice(int(offs[0]), int(offs[-1] - offs[0]))
        offsets = offs - offs[0]
    return offsets, values


def _out_of_range(v: np.ndarray, lo: float, hi: float) -> bool:
    """Any value outside [lo, hi]? One pass for non-negative integer ranges."""
    if lo == 0 and v.dtype.kind == "i":
        return bool(v.view(v.dtype.str.replace("i", "u")).max() > hi)  # negatives wrap to huge
    return bool(v.min() < lo or v.max() > hi)


def _rows_of(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Flat value positions -> unique row indices."""
    return np.unique(np.searchsorted(offsets, positions, side="right") - 1)


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v.item() if isinstance(v, np.generic) else v)


class _Tally:
    """Counts failing rows per (column, issue) across chunks; remembers the first one."""

    def __init__(self, path: str):
        self.path = path
        self.rows = 0
        self.entries: dict[tuple[str, str], list] = {}

    def add(self, col: str, issue: str, bad_rows: np.ndarray, offset: int, detail) -> None:
        """``bad_rows``: sorted unique local row indices; ``detail(i)`` describes local row i."""
        if len(bad_rows) == 0:
            return
        key = (col, issue)
        if key not in self.entries:
            first = int(bad_rows[0])
            self.entries[key] = [0, offset + first, detail(first)]
        self.entries[key][0] += len(bad_rows)

    def messages(self) -> list[str]:
        out = []
        for (col, issue), (count, first, detail) in self.entries.items():
            tail = f" ({detail})" if detail else ""
            out.append(
                f"{self.path}: column '{col}': {issue}; {count} of {self.rows} rows fail, "
                f"first at row {first}{tail}"
            )
        return out


class _ColumnChecks:
    """Vectorised value checks for one column, fed chunk by chunk."""

    def __init__(self, tally: _Tally, name: str):
        self.tally = tally
        self.name = name
        self.seq_width: int | None = None  # first row's length, for "constant length" lists
        self.seq_width_row = 0

    @staticmethod
    def scratch(key: str, size: int) -> np.ndarray:
        """A reusable bool buffer (per thread): touching fresh pages costs more than the check
        itself, and the loader calls the checks batch after batch."""
        cache = _SCRATCH.__dict__
        buf = cache.get(key)
        if buf is None or len(buf) < size:
            buf = cache[key] = np.empty(max(size, 1), dtype=bool)
        return buf[:size]

    def nulls(self, arr: pa.Array, offset: int) -> None:
        if arr.null_count:
            bad = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))
            self.tally.add(
                self.name, "null entries (expected a value in every row)", bad, offset, lambda i: ""
            )

    def scalar_range(self, arr: pa.Array, offset: int, lo: float, hi: float, what: str) -> None:
        v = arr.to_numpy(zero_copy_only=False)
        ok = (v >= lo) & (v <= hi)  # NaN fails too
        if arr.null_count:  # nulls are reported once, by nulls()
            ok |= arr.is_null().to_numpy(zero_copy_only=False)
        if ok.all():
            return
        bad = np.flatnonzero(~ok)
        self.tally.add(self.name, what, bad, offset, lambda i: f"value {_fmt(v[i])}")

    def finite(self, arr: pa.Array, offset: int) -> None:
        v = arr.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        ok = np.isfinite(v)
        if arr.null_count:
            ok |= arr.is_null().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~ok)
        self.tally.add(
            self.name,
            "NaN/inf values (expected finite numbers)",
            bad,
            offset,
            lambda i: f"value {_fmt(v[i])}",
        )

    def list_values(
        self,
        arr: pa.Array,
        offset: int,
        *,
        length: int | None,
        constant_length: bool = False,
        lo: float | None = None,
        hi: float | None = None,
        range_what: str = "",
        finite: bool = False,
        left_padded: bool = False,
        zero_row0: bool = False,
    ) -> None:
        offsets, values = _list_parts(arr)
        n = len(arr)
        lens = np.diff(offsets)
        name, tally = self.name, self.tally
        if values.null_count:
            pos = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
            tally.add(
                name, "null values inside the lists", _rows_of(pos, offsets), offset, lambda i: ""
            )
            values = values.fill_null(0)
        v = values.to_numpy(zero_copy_only=False)
        self._list_lengths(arr, offset, lens, length, constant_length)
        if len(v) == 0:
            return
        if lo is not None and hi is not None and _out_of_range(v, lo, hi):
            pos = np.flatnonzero((v < lo) | (v > hi))
            first = v[pos[0]]
            tally.add(
                name, range_what, _rows_of(pos, offsets), offset, lambda i: f"value {_fmt(first)}"
            )
        if finite:
            fin = np.isfinite(v)
            if not fin.all():
                rows = _rows_of(np.flatnonzero(~fin), offsets)
                tally.add(
                    name,
                    "NaN/inf values in the vectors (expected finite floats)",
                    rows,
                    offset,
                    lambda i: "",
                )
        if left_padded:
            self._left_padded(v, offsets, offset)
        if zero_row0 and offset == 0 and n:
            row0 = v[offsets[0] : offsets[1]]
            if np.any(row0 != 0):
                nzc = int(np.count_nonzero(row0))
                tally.add(
                    name,
                    "padding row 0 must be all zeros",
                    np.array([0]),
                    0,
                    lambda i: f"{nzc} non-zero entries",
                )

    def _list_lengths(
        self, arr: pa.Array, offset: int, lens: np.ndarray, length: int | None, constant: bool
    ) -> None:
        """Lists of ``length`` entries, or (``constant``) as many as the first valid row's."""
        name, tally, n = self.name, self.tally, len(arr)
        if length is not None:
            bad = np.flatnonzero(lens != length)
            tally.add(
                name,
                f"expected lists of length {length}",
                bad,
                offset,
                lambda i: f"length {int(lens[i])}",
            )
        elif constant and n:
            valid = np.ones(n, dtype=bool)
            if arr.null_count:  # null rows are reported once, by nulls()
                valid = ~arr.is_null().to_numpy(zero_copy_only=False)
            if self.seq_width is None and valid.any():
                first = int(np.argmax(valid))
                self.seq_width, self.seq_width_row = int(lens[first]), offset + first
            if self.seq_width is not None:
                bad = np.flatnonzero((lens != self.seq_width) & valid)
                tally.add(
                    name,
                    f"every row must hold the same number of entries (row {self.seq_width_row} "
                    f"has {self.seq_width})",
                    bad,
                    offset,
                    lambda i: f"length {int(lens[i])}",
                )

    def _left_padded(self, v: np.ndarray, offsets: np.ndarray, offset: int) -> None:
        """Every row's real entries after its padding zeros (flat values ``v``)."""
        name, tally = self.name, self.tally
        nz = np.not_equal(v, 0, out=self.scratch("nz", len(v)))
        # a real entry followed by a 0 ...
        after = np.greater(nz[:-1], nz[1:], out=self.scratch("after", max(len(v) - 1, 0)))
        inner = offsets[1:-1] - 1  # ... inside one row (not across a row boundary)
        after[inner[(inner >= 0) & (inner < len(after))]] = False
        if after.any():
            rows = _rows_of(np.flatnonzero(after), offsets)
            tally.add(
                name,
                "not left-padded: a 0 follows a real item (expected padding first, most "
                "recent item last)",
                rows,
                offset,
                lambda i: "",
            )


def _type_problem(path: str, col: str, t: pa.DataType, role: str) -> str | None:
    """None when column type ``t`` fits ``role``; else a message."""
    vt = _list_value_type(t)
    if role in ("int", "id"):
        ok = pa.types.is_integer(t)
        want = "an integer column (int64)"
    elif role == "numeric":
        ok = _is_numeric(t)
        want = "a numeric column"
    elif role == "int_list":
        ok = vt is not None and pa.types.is_integer(vt)
        want = "a list of integers (list<int64>)"
    elif role == "float_list":
        ok = vt is not None and pa.types.is_floating(vt)
        want = "a list of floats (list<float32>)"
    else:  # pragma: no cover - internal
        raise ValueError(role)
    if ok:
        return None
    return f"{path}: column '{col}': wrong type: expected {want}, found {t}"


def _side_role(f: FeatureSpec) -> str | None:
    if f.type == "categorical":
        return "int"
    if f.type == "numeric":
        return "numeric"
    if f.type == "sequence":
        return "int_list"
    if f.type == "embedding":
        return "float_list"
    return None


def _iter_slices(table: pa.Table) -> Iterable[tuple[int, pa.RecordBatch]]:
    offset = 0
    for batch in table.to_batches(max_chunksize=_CHECK_ROWS):
        yield offset, batch
        offset += batch.num_rows


# --------------------------------------------------------------------------- item_info


def check_item_info_table(table: pa.Table, path: str, dataset: DatasetConfig) -> list[str]:
    """Problems of an ``item_info`` table: columns, types, row index == item id, list
    lengths, value ranges, finite embeddings, all-zero padding row 0. Empty list = OK."""
    path = str(path)
    problems: list[str] = []
    names = set(table.column_names)
    id_feat = item_id_feature(dataset)
    n = table.num_rows
    if n == 0:
        return [
            f"{path}: the item table has no rows (expected row 0 = padding, then one row per item)"
        ]
    tally = _Tally(path)
    tally.rows = n
    checks: list[tuple[FeatureSpec, str]] = []
    for f in dataset.item_features:
        if f.name not in names:
            problems.append(
                f"{path}: column '{f.name}' is missing (item-side {f.type} feature of the config); "
                f"found columns {sorted(names)}"
            )
            continue
        role = "id" if f is id_feat else _side_role(f)
        if role is None:
            continue
        tp = _type_problem(path, f.name, table.schema.field(f.name).type, role)
        if tp:
            problems.append(tp)
            continue
        checks.append((f, role))
    if id_feat is not None and id_feat.vocab_size is not None and n > id_feat.vocab_size:
        problems.append(
            f"{path}: {n} item rows but feature '{id_feat.name}' declares vocab_size "
            f"{id_feat.vocab_size} (expected at least one embedding row per item)"
        )
    col_checks = {f.name: _ColumnChecks(tally, f.name) for f, _ in checks}
    for offset, batch in _iter_slices(table.select([f.name for f, _ in checks])):
        for f, role in checks:
            arr = batch.column(f.name)
            cc = col_checks[f.name]
            cc.nulls(arr, offset)
            if role == "id":
                _check_row_index(tally, f.name, arr, offset)
            elif role == "int":
                vs = f.vocab_size
                if vs is not None:
                    cc.scalar_range(
                        arr, offset, 0, vs - 1, f"values must be in 0..{vs - 1} (vocab_size {vs})"
                    )
                _zero_row0_scalar(tally, f.name, arr, offset)
            elif role == "numeric":
                cc.finite(arr, offset)
                _zero_row0_scalar(tally, f.name, arr, offset)
            elif role == "int_list":
                cc.list_values(
                    arr,
                    offset,
                    length=f.max_len,
                    constant_length=f.max_len is None,
                    zero_row0=True,
                    **_id_range(f.vocab_size),
                )
            elif role == "float_list":
                cc.list_values(
                    arr,
                    offset,
                    length=f.embedding_dim,
                    constant_length=f.embedding_dim is None,
                    finite=True,
                    zero_row0=True,
                )
    return problems + tally.messages()

def _check_row_index(tally: _Tally, name: str, arr: pa.Array, offset: int) -> None:
    """The item-id column equals the row index (its nulls are reported by ``nulls``)."""
    v = arr.to_numpy(zero_copy_only=False)
    ok = v == np.arange(offset, offset + len(v))
    if arr.null_count:
        ok |= arr.is_null().to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~ok)
    tally.add(
        name,
        "must equal the row index (row i describes item i, row 0 = padding)",
        bad,
        offset,
        lambda i, v=v: f"value {_fmt(v[i])}",
    )



def _id_range(vocab_size: int | None) -> dict[str, Any]:
    """``list_values`` bounds for ids of a ``vocab_size`` vocabulary (none when unknown;
    config loading rejects a vocab_size below 1)."""
    if vocab_size is None:
        return {"lo": None, "hi": None, "range_what": ""}
    hi = vocab_size - 1
    return {"lo": 0, "hi": hi, "range_what": f"values must be in 0..{hi} (vocab_size {vocab_size})"}


def _zero_row0_scalar(tally: _Tally, name: str, arr: pa.Array, offset: int) -> None:
    if offset == 0 and len(arr) and arr[0].as_py() not in (0, None):
        val = arr[0].as_py()
        tally.add(name, "padding row 0 must be 0", np.array([0]), 0, lambda i: f"value {val}")


# ------------------------------------------------------------------------------- splits


class SplitChecker:
    """The split checks, fed record batch by record batch (the row counter runs across).

    ``problems`` holds what the schema alone shows (missing columns, wrong types, a config
    the loader cannot read); :meth:`feed` checks the values of ``read_columns``.
    ``group_col`` (the trainer's ``group_id``) must then be an integer column without nulls.
    """

    def __init__(
        self,
        schema: pa.Schema,
        path: str,
        dataset: DatasetConfig,
        *,
        n_items: int | None,
        require_label: bool,
        group_col: str | None = None,
    ):
        self.path = path = str(path)
        self.tally = _Tally(path)
        self.problems: list[str] = check_feature_config(dataset)
        names = set(schema.names)
        id_feat = item_id_feature(dataset)
        if n_items is None and id_feat is not None:
            n_items = id_feat.vocab_size
        self.n_items = n_items
        self.cols: list[tuple[str, str, FeatureSpec | None]] = []  # (name, role, spec)
        self.checkers: dict[str, _ColumnChecks] = {}

        def need(name: str, f: FeatureSpec | None, role: str | None, what: str) -> None:
            if name not in names:
                self.problems.append(
                    f"{path}: column '{name}' is missing ({what}); found columns {sorted(names)}"
                )
                return
            if role is None:
                self.cols.append((name, "present", f))
                return
            type_role = {"target": "int", "history": "int_list", "group": "int"}.get(role, role)
            tp = _type_problem(path, name, schema.field(name).type, type_role)
            if tp:
                self.problems.append(tp)
            else:
                self.cols.append((name, role, f))

        hist = history_columns(dataset)
        for f in dataset.active_features:
            if f.is_item_side and f is not id_feat:
                continue  # lives in item_info
            if f is id_feat:
                need(f.name, f, "target", "the target item id, a row index into item_info")
            elif f.name in hist or f.type in ("sequence", "embedding"):
                continue  # histories below; per-row lists are config problems (above)
            elif f.type == "meta":
                need(f.name, f, "int" if f.dtype == "int" else None, "meta column of the config")
            else:
                need(f.name, f, _side_role(f), f"{f.type} feature of the config")
        for name in hist:
            need(name, None, "history", "the user's history of item ids, left-padded with 0")
        if group_col:
            known = {c: r for c, r, _ in self.cols}
            if known.get(group_col) not in ("int", "target"):
                self.cols = [c for c in self.cols if c[0] != group_col]
                need(group_col, None, "group", "named by group_id, the rows grouped for gAUC")
        label = dataset.label_col.name
        if label in names:
            t = schema.field(label).type
            if not _is_numeric(t):
                self.problems.append(
                    f"{path}: column '{label}': wrong type: expected 0/1 labels (int64), found {t}"
                )
            else:
                self.cols.append((label, "label", None))
        elif require_label:
            self.problems.append(
                f"{path}: column '{label}' (label) is missing; found columns {sorted(names)}"
            )
        self.read_columns = [c for c, _, _ in self.cols]

    @property
    def has_problems(self) -> bool:
        return bool(self.problems or self.tally.entries)

    def feed(self, batch: pa.RecordBatch | pa.Table, offset: int) -> None:
        tally = self.tally
        n_items = self.n_items
        for name, role, f in self.cols:
            arr = batch.column(name)
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            cc = self.checkers.setdefault(name, _ColumnChecks(tally, name))
            cc.nulls(arr, offset)
            if role == "target" and n_items is not None:
                cc.scalar_range(
                    arr,
                    offset,
                    1,
                    n_items - 1,
                    f"item ids must be in 1..{n_items - 1} (item_info has {n_items} rows, row 0 = padding)",
                )
            elif role == "history":
                cc.list_values(
                    arr,
                    offset,
                    length=None,
                    constant_length=True,
                    lo=0 if n_items is not None else None,
                    hi=n_items - 1 if n_items is not None else None,
                    range_what=f"item ids must be in 0..{n_items - 1} (0 = padding; item_info has {n_items} rows)",
                    left_padded=True,
                )
            elif role == "int" and f is not None and f.type == "categorical" and f.vocab_size:
                vs = f.vocab_size
                cc.scalar_range(
                    arr,
                    offset,
                    0,
                    vs - 1,
                    f"values must be in 0..{vs - 1} (vocab_size {vs}, 0 = padding)",
                )
            elif role == "numeric":
                cc.finite(arr, offset)
            elif role == "int_list" and f is not None:
                cc.list_values(
                    arr,
                    offset,
                    length=f.max_len,
                    constant_length=f.max_len is None,
                    **_id_range(f.vocab_size),
                )
            elif role == "float_list" and f is not None:
                cc.list_values(arr, offset, length=f.embedding_dim, finite=True)
            elif role == "label":
                v = arr.to_numpy(zero_copy_only=False)
                ok = (v == 0) | (v == 1)
                if arr.null_count:
                    ok |= arr.is_null().to_numpy(zero_copy_only=False)
                bad = np.flatnonzero(~ok)
                tally.add(
                    name, "labels must be 0 or 1", bad, offset, lambda i, v=v: f"value {_fmt(v[i])}"
                )
        tally.rows = offset + batch.num_rows

    def result(self) -> list[str]:
        return self.problems + self.tally.messages()


def check_split_table(
    table: pa.Table,
    path: str,
    dataset: DatasetConfig,
    *,
    n_items: int | None,
    require_label: bool,
    group_col: str | None = None,
) -> list[str]:
    """Problems of one split table (train/valid/test); empty list = OK.

    ``n_items`` is the number of rows of item_info (None: the item id feature's vocab_size).
    The label is checked (0/1) whenever the column is present; ``require_label`` makes a
    missing label column a problem. ``group_col`` is the trainer's ``group_id`` column, if
    any. Row numbers in messages count from the table's row 0.
    """
    checker = SplitChecker(
        table.schema,
        path,
        dataset,
        n_items=n_items,
        require_label=require_label,
        group_col=group_col,
    )
    sub = table.select(checker.read_columns)
    for offset, batch in _iter_slices(sub):
        checker.feed(batch, offset)
    checker.tally.rows = table.num_rows
    return checker.result()


# ------------------------------------------------------------------------------ dataset


def _split_path(dataset: DatasetConfig, split: str) -> str | None:
    return {"train": dataset.train_data, "valid": dataset.valid_data, "test": dataset.test_data}[
        split
    ]


def validate_dataset(
    dataset: DatasetConfig,
    splits: Iterable[str] = ("train", "valid", "test"),
    require_test_label: bool = False,
    group_col: str | None = None,
) -> None:
    """Read item_info and the split files of ``dataset`` and check them all.

    Raises :class:`DataContractError` listing every problem of every file. Train and valid
    must carry 0/1 labels; the test split's label column is optional and, unless
    ``require_test_label``, not checked at all (the real test labels are hidden and the column
    may be a placeholder). ``group_col`` (the trainer's ``group_id``) must be an integer
    column of every split.
    """
    problems: list[str] = []
    n_items: int | None = None
    info = dataset.item_info
    if not info:
        problems.append(f"dataset '{dataset.dataset_id}': no item_info path in the config")
    elif not Path(info).is_file():
        problems.append(f"{info}: file not found (item_info)")
    else:
        try:
            table = pq.read_table(info)
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{info}: cannot be read as parquet ({exc})")
        else:
            n_items = table.num_rows
            problems += check_item_info_table(table, info, dataset)
            del table
    for split in splits:
        path = _split_path(dataset, split)
        if not path:
            problems.append(f"dataset '{dataset.dataset_id}': no {split}_data path in the config")
            continue
        if not Path(path).is_file():
            problems.append(f"{path}: file not found ({split} split)")
            continue
        require_label = split != "test" or require_test_label
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
            if split == "test" and not require_test_label:
                label = dataset.label_col.name
                if label in schema.names:
                    schema = pa.schema([f for f in schema if f.name != label])
            checker = SplitChecker(
                schema,
                path,
                dataset,
                n_items=n_items,
                require_label=require_label,
                group_col=group_col,
            )
            offset = 0
            if checker.read_columns:
                for batch in pf.iter_batches(batch_size=_CHECK_ROWS, columns=checker.read_columns):
                    checker.feed(batch, offset)
                    offset += batch.num_rows
            checker.tally.rows = pf.metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            problems.append(f"{path}: cannot be read as parquet ({exc})")
            continue
        problems += checker.result()
    if problems:
        # config problems are found once per split: list them once
        raise DataContractError(list(dict.fromkeys(problems)))


def main(argv: list[str] | None = None) -> int:
    """``python -m mmctr.data.contract DATA_DIR [--require-test-label]``."""
    import argparse

    ap = argparse.ArgumentParser(description="Check a MicroLens-shaped data folder.")
    ap.add_argument("data_dir")
    ap.add_argument("--require-test-label", action="store_true")
    args = ap.parse_args(argv)
    try:
        validate_dataset(
            microlens_dataset_config(args.data_dir), require_test_label=args.require_test_label
        )
    except DataContractError as exc:
        print("\n".join(["FAILED:"] + [f"  - {p}" for p in exc.problems]))
        return 1
    print(f"OK: {args.data_dir} follows the data contract")
    return 0


if __name__ == "__main__":
    sys.exit(main())
