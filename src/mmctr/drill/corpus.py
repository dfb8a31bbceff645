"""The bad-input corpus: malformed parquet, images, YAML and command lines, made by code.

A *fatal* case breaks one thing in a private copy of the tiny workspace and runs one entry
point on it. It is handled when the command exits non-zero with exactly one ``error:`` line
that names what is wrong (the file, column or key: the case's ``expect`` words), prints no
traceback and leaves every file as it was (no partial output; appended logs aside).

An *image* case is one bad file in the image folder of a single ``generate_embeddings.py``
run: a real image folder always holds a few, so the run must finish and record each such
item in ``<stem>.status.csv`` (``corrupt`` for what cannot be decoded, ``ok`` for unusual but
valid images), with an all-zero vector for the corrupt ones.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmctr.drill.workspace import EXPID, Workspace, changes, copy_workspace, run_entry, snapshot


@dataclass
class Case:
    """``prepare(ws)`` breaks the copy and returns the command's arguments."""

    name: str
    command: str
    prepare: Callable[[Workspace], list[str]]
    expect: tuple[str, ...]


@dataclass
class Outcome:
    name: str
    named_error: bool
    traceback: bool
    partial: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.named_error and not self.traceback and not self.partial


# ---- parquet edits ----------------------------------------------------------------------


def _edit(path: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


def _set(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, values if isinstance(values, pa.Array) else pa.array(values))


def _poke(name: str, row: int, value) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        col = t.column(name).to_pylist()
        col[row] = value
        return _set(t, name, pa.array(col, type=t.schema.field(name).type))

    return fn


def _poke_list(name: str, row: int, pos: int, value) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        col = t.column(name).to_pylist()
        col[row] = list(col[row])
        col[row][pos] = value
        return _set(t, name, pa.array(col, type=t.schema.field(name).type))

    return fn


def _resize_lists(name: str, row: int, width: int) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        col = t.column(name).to_pylist()
        col[row] = (list(col[row]) + [0] * width)[:width]
        return _set(t, name, pa.array(col, type=t.schema.field(name).type))

    return fn


def _cast(name: str, type_: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    return lambda t: _set(t, name, t.column(name).cast(type_).combine_chunks())


def _parquet_case(split: str, label: str, fn, expect: tuple[str, ...], command: str = "train"):
    def prepare(ws: Workspace) -> list[str]:
        _edit(ws.data / f"{split}.parquet", fn)
        return _args(ws, command)

    return Case(f"parquet: {split} {label}", command, prepare, (f"{split}.parquet", *expect))


def _file_case(split: str, label: str, write: Callable[[Path], None], expect, command="train"):
    def prepare(ws: Workspace) -> list[str]:
        write(ws.data / f"{split}.parquet")
        return _args(ws, command)

    return Case(f"parquet: {split} {label}", command, prepare, (f"{split}.parquet", *expect))


def _args(ws: Workspace, command: str) -> list[str]:
    if command == "predict":
        return ws.experiment_args(out=str(ws.root / "submission"))
    return ws.experiment_args()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_rows(path: Path) -> None:
    t = pq.read_table(path)
    pq.write_table(t.slice(0, 0), path)


def parquet_cases() -> list[Case]:
    P, F = _parquet_case, _file_case
    drop = lambda col: lambda t: t.drop_columns([col])  # noqa: E731
    f32 = pa.list_(pa.float32())
    return [
        P("train", "missing column likes_level", drop("likes_level"), ("likes_level",)),
        P("train", "missing column item_seq", drop("item_seq"), ("item_seq",)),
        P("train", "missing column label", drop("label"), ("label",)),
        P("train", "item_id as strings", _cast("item_id", pa.string()), ("item_id",)),
        P("train", "label as strings", _cast("label", pa.string()), ("label",)),
        P("train", "likes_level as floats", _cast("likes_level", pa.float64()), ("likes_level",)),
        P("train", "item_seq of strings", _cast("item_seq", pa.list_(pa.string())), ("item_seq",)),
        P("train", "negative item_id", _poke("item_id", 3, -4), ("item_id",)),
        P("train", "out-of-vocab item_id", _poke("item_id", 5, 300), ("item_id",)),
        P("train", "negative id in item_seq", _poke_list("item_seq", 2, -1, -7), ("item_seq",)),
        P(
            "train",
            "out-of-vocab id in item_seq",
            _poke_list("item_seq", 2, -1, 999),
            ("item_seq",),
        ),
        P("train", "likes_level out of vocab", _poke("likes_level", 1, 11), ("likes_level",)),
        P("train", "label 2", _poke("label", 0, 2), ("label",)),
        P("train", "label -1", _poke("label", 9, -1), ("label",)),
        P("train", "null item_id", _poke("item_id", 4, None), ("item_id",)),
        P("train", "null views_level", _poke("views_level", 4, None), ("views_level",)),
        F("train", "empty file (0 bytes)", lambda p: p.write_bytes(b""), ()),
        F("train", "truncated file", _truncate, ()),
        F("train", "not a parquet (CSV text)", lambda p: p.write_text("a,b\n1,2\n"), ()),
        F("train", "no rows", _zero_rows, ()),
        F("train", "missing file", lambda p: p.unlink(), ()),
        P("valid", "missing column views_level", drop("views_level"), ("views_level",)),
        P("valid", "label 0.5", _poke_float_label, ("label",)),
        F("valid", "truncated file", _truncate, ()),
        F("valid", "no rows", _zero_rows, ()),
        P(
            "item_info",
            "item_tags list of length 4",
            _resize_lists("item_tags", 7, 4),
            ("item_tags",),
        ),
        P(
            "item_info",
            "item_emb_d128 list of length 64",
            _resize_lists("item_emb_d128", 3, 64),
            ("item_emb_d128",),
        ),
        P(
            "item_info",
            "NaN in item_emb_d128",
            _poke_list("item_emb_d128", 5, 0, float("nan")),
            ("item_emb_d128",),
        ),
        P(
            "item_info",
            "inf in item_emb_d128",
            _poke_list("item_emb_d128", 6, 9, float("inf")),
            ("item_emb_d128",),
        ),
        P(
            "item_info",
            "row 0 embedding not zero",
            _poke_list("item_emb_d128", 0, 1, 0.5),
            ("item_emb_d128",),
        ),
        P("item_info", "row 0 tags not zero", _poke_list("item_tags", 0, 4, 3), ("item_tags",)),
        P("item_info", "item_id != row index", _poke("item_id", 10, 11), ("item_id",)),
        P("item_info", "negative tag id", _poke_list("item_tags", 8, 4, -2), ("item_tags",)),
        P("item_info", "out-of-vocab tag id", _poke_list("item_tags", 8, 4, 11740), ("item_tags",)),
        P("item_info", "missing column item_emb_d128", drop("item_emb_d128"), ("item_emb_d128",)),
        P(
            "item_info",
            "item_emb_d128 as lists of strings",
            _cast("item_emb_d128", pa.list_(pa.string())),
            ("item_emb_d128",),
        ),
        P(
            "item_info",
            "one row more than the vocab_size",
            _one_more_item,
            ("vocab_size",),
        ),
        F("item_info", "empty file (0 bytes)", lambda p: p.write_bytes(b""), ()),
        F("item_info", "no rows", _zero_rows, ()),
        P("test", "missing column item_seq", drop("item_seq"), ("item_seq",), "predict"),
        P("test", "out-of-vocab item_id", _poke("item_id", 1, 5000), ("item_id",), "predict"),
        F("test", "no rows (fewer than one per ID)", _zero_rows, ("no rows",), "predict"),
        F("test", "truncated file", _truncate, (), "predict"),
        F("test", "not a parquet", lambda p: p.write_text("ID,Task2\n"), (), "predict"),
        P(
            "test",
            "item_seq of floats",
            _cast("item_seq", pa.list_(pa.float64())),
            ("item_seq",),
            "predict",
        ),
        P("item_info", "item_emb_d128 lists all empty", _empty_lists(f32), ("item_emb_d128",)),
    ]


def _empty_lists(type_: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    return lambda t: _set(t, "item_emb_d128", pa.array([[]] * t.num_rows, type=type_))


def _one_more_item(t: pa.Table) -> pa.Table:
    extra = t.slice(t.num_rows - 1, 1).to_pylist()[0] | {"item_id": t.num_rows}
    return pa.concat_tables([t, pa.Table.from_pylist([extra], schema=t.schema)])


def _poke_float_label(t: pa.Table) -> pa.Table:
    labels = t.column("label").cast(pa.float64()).to_pylist()
    labels[2] = 0.5
    return _set(t, "label", pa.array(labels))


# ---- YAML -------------------------------------------------------------------------------


def _yaml_case(label: str, fn: Callable[[str], str], expect, which="model_config.yaml", args=None):
    def prepare(ws: Workspace) -> list[str]:
        path = ws.config / which
        path.write_text(fn(path.read_text()))
        return args(ws) if args else ws.experiment_args()

    return Case(f"yaml: {label}", "train", prepare, expect)


def yaml_cases() -> list[Case]:
    Y = _yaml_case
    return [
        Y("syntax error", lambda s: s + "\n  broken: [1, 2\n", ("model_config.yaml",)),
        Y(
            "tab indentation",
            lambda s: s.replace("  batch_size", "\tbatch_size"),
            ("model_config.yaml",),
        ),
        Y(
            "unknown key",
            lambda s: s.replace("  batch_size:", "  batch_sizee: 3\n  batch_size:"),
            ("batch_sizee",),
        ),
        Y(
            "wrong type (learning_rate: fast)",
            lambda s: _set_key(s, "learning_rate", "fast"),
            ("learning_rate",),
        ),
        Y("wrong type (epochs: [1])", lambda s: _set_key(s, "epochs", "[1]"), ("epochs",)),
        Y("negative batch_size", lambda s: _set_key(s, "batch_size", "-8"), ("batch_size",)),
        Y("repeated key", lambda s: s.replace("  epochs:", "  epochs: 1\n  epochs:"), ("epochs",)),
        Y("missing expid", lambda s: s.replace(f"{EXPID}:", "other_exp:"), (EXPID,)),
        Y(
            "missing dataset block",
            lambda s: s.replace("tiny:", "other:", 1),
            ("tiny",),
            "dataset_config.yaml",
        ),
        Y(
            "dataset_id not in dataset_config",
            lambda s: s.replace("dataset_id: tiny", "dataset_id: nowhere"),
            ("nowhere",),
        ),
        Y(
            "unknown dataset key",
            lambda s: s.replace("  data_format:", "  data_fromat: parquet\n  data_format:", 1),
            ("data_fromat",),
            "dataset_config.yaml",
        ),
        Y(
            "train_data file missing",
            lambda s: s.replace("train.parquet", "gone.parquet"),
            ("gone.parquet",),
            "dataset_config.yaml",
        ),
        Y(
            "model_config.yaml not a mapping",
            lambda s: "- just\n- a list\n",
            ("model_config.yaml",),
        ),
        Y(
            "expid block named ../../escape",
            _rename_block("../../escape"),
            ("../../escape",),
            args=_escape_args,
        ),
        Y(
            "dataset_id ../escape",
            lambda s: s.replace("dataset_id: tiny", "dataset_id: ../escape"),
            ("../escape",),
        ),
        Y("unknown model", lambda s: _set_key(s, "model", "NoSuchNet"), ("NoSuchNet",)),
        Y("empty model_config.yaml", lambda s: "", ("model_config.yaml",)),
    ]


def _rename_block(name: str) -> Callable[[str], str]:
    return lambda text: text.replace(f"{EXPID}:", f"{name!r}:")


def _escape_args(ws: Workspace) -> list[str]:
    return ["--config", str(ws.config), "--expid", "../../escape", "--gpu", "-1"]


def _set_key(text: str, key: str, value: str) -> str:
    lines = [f"  {key}: {value}" if ln.startswith(f"  {key}:") else ln for ln in text.splitlines()]
    return "\n".join(lines) + "\n"


def _tuner_case(label: str, doc: str, expect) -> Case:
    def prepare(ws: Workspace) -> list[str]:
        path = ws.root / "tuner" / "t.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc.format(config=ws.config, expid=EXPID))
        return ["--config", str(path), "--gpu", "-1"]

    return Case(f"yaml: tuner {label}", "tune", prepare, expect)


def tuner_cases() -> list[Case]:
    good = "base_config: {config}\nbase_expid: {expid}\ndataset_id: tiny\ntuner_space:\n  learning_rate: [1.0e-3]\n"
    return [
        _tuner_case("syntax error", good + "  embedding_dim: [4\n", ("t.yaml",)),
        _tuner_case("unknown key", good.replace("dataset_id", "datset_id"), ("datset_id",)),
        _tuner_case(
            "missing base_expid", good.replace("base_expid: {expid}\n", ""), ("base_expid",)
        ),
        _tuner_case(
            "tuner_space not a mapping",
            good.split("tuner_space")[0] + "tuner_space: 3\n",
            ("tuner_space",),
        ),
        _tuner_case(
            "unknown parameter in the grid", good + "  embeding_dim: [4]\n", ("embeding_dim",)
        ),
    ]


# ---- command lines ------------------------------------------------------------------------


def _cli_case(label: str, command: str, args: Callable[[Workspace], list[str]], expect) -> Case:
    return Case(f"cli: {command} {label}", command, args, expect)


def _a_file(ws: Workspace) -> Path:
    path = ws.root / "a_file"
    path.write_text("keep\n")
    return path


def _no_last(ws: Workspace) -> list[str]:
    (ws.run_dir / "last.pt").unlink()
    return []


def _evil_checkpoint(ws: Workspace) -> Path:
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {ws.root / 'pwned'}",))

    path = ws.root / "shared_model.pt"
    torch.save({"format": "mmctr.model/1", "x": Evil()}, path)
    return path


def cli_cases() -> list[Case]:
    C = _cli_case
    sub = lambda ws: str(ws.root / "submission")  # noqa: E731

    def emb(ws: Workspace, **kw: str) -> list[str]:
        args = {
            "item-info": str(ws.data / "item_info.parquet"),
            "image-dir": str(ws.data / "item_images"),
        }
        args.update(
            {
                "model": str(ws.root / "tiny_clip"),
                "out": str(ws.root / "emb" / "items.parquet"),
                **kw,
            }
        )
        return [x for k, v in args.items() for x in (f"--{k}", v)] + [
            "--num-workers",
            "0",
            "--no-progress",
        ]

    def exp(ws: Workspace, expid: str = EXPID, *extra: str) -> list[str]:
        return [
            "--config",
            str(ws.config),
            "--expid",
            expid,
            "--gpu",
            "-1",
            "--no-progress",
            *extra,
        ]

    return [
        C(
            "missing --config folder",
            "train",
            lambda ws: ["--config", str(ws.root / "nope"), "--expid", EXPID],
            ("nope",),
        ),
        C(
            "--config is a file",
            "train",
            lambda ws: ["--config", str(_a_file(ws)), "--expid", EXPID],
            ("a_file",),
        ),
        C("--gpu 0 without a GPU", "train", lambda ws: [*exp(ws), "--gpu", "0"], ("--gpu 0",)),
        C("expid with ../", "train", lambda ws: exp(ws, f"../{EXPID}"), ("../",)),
        C(
            "--resume without last.pt",
            "train",
            lambda ws: [*_no_last(ws), *exp(ws), "--resume"],
            ("last.pt",),
        ),
        C(
            "--override of an unknown key",
            "train",
            lambda ws: [*exp(ws), "--override", "lerning_rate=1"],
            ("lerning_rate",),
        ),
        C(
            "--gpu 0 without a GPU",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--gpu", "0"],
            ("--gpu 0",),
        ),
        C(
            "expid with ../",
            "predict",
            lambda ws: [*exp(ws, f"../../{EXPID}"), "--out", sub(ws)],
            ("../",),
        ),
        C(
            "--out is a file",
            "predict",
            lambda ws: [*exp(ws), "--out", str(_a_file(ws))],
            ("a_file",),
        ),
        C(
            "--out under a file",
            "predict",
            lambda ws: [*exp(ws), "--out", str(_a_file(ws) / "sub")],
            ("a_file",),
        ),
        C(
            "--checkpoint missing",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--checkpoint", str(ws.root / "no.pt")],
            ("no.pt",),
        ),
        C(
            "--checkpoint that runs code",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--checkpoint", str(_evil_checkpoint(ws))],
            ("shared_model.pt", "refused"),
        ),
        C(
            "--checkpoint is last.pt",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--checkpoint", str(ws.run_dir / "last.pt")],
            ("last.pt",),
        ),
        C(
            "--checkpoint is a text file",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--checkpoint", str(_a_file(ws))],
            ("a_file",),
        ),
        C(
            "--test-data missing",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--test-data", str(ws.root / "t.parquet")],
            ("t.parquet",),
        ),
        C(
            "--batch-size 0",
            "predict",
            lambda ws: [*exp(ws), "--out", sub(ws), "--batch-size", "0"],
            ("--batch-size",),
        ),
        C(
            "--item-info missing",
            "embed",
            lambda ws: emb(ws, **{"item-info": str(ws.root / "none.parquet")}),
            ("none.parquet",),
        ),
        C(
            "--image-dir missing",
            "embed",
            lambda ws: emb(ws, **{"image-dir": str(ws.root / "no_images")}),
            ("no_images",),
        ),
        C(
            "--model folder missing",
            "embed",
            lambda ws: emb(ws, model=str(ws.root / "no_clip")),
            ("no_clip",),
        ),
        C("--out is a folder", "embed", lambda ws: emb(ws, out=str(ws.data)), ("data",)),
        C(
            "--out under a file",
            "embed",
            lambda ws: emb(ws, out=str(_a_file(ws) / "x.parquet")),
            ("a_file",),
        ),
        C("--gpu 0 without a GPU", "embed", lambda ws: emb(ws, gpu="0"), ("--gpu 0",)),
        C(
            "--pca file missing",
            "embed",
            lambda ws: emb(ws, pca=str(ws.root / "no.pca.npz")),
            ("no.pca.npz",),
        ),
        C(
            "--config missing",
            "tune",
            lambda ws: ["--config", str(ws.root / "none.yaml")],
            ("none.yaml",),
        ),
        C(
            "--gpu 0 without a GPU",
            "tune",
            lambda ws: [*tuner_cases()[0].prepare(ws)[:2], "--gpu", "0"],
            ("--gpu 0",),
        ),
        C(
            "--max-parallel 0",
            "tune",
            lambda ws: ["--config", str(ws.root / "x.yaml"), "--max-parallel", "0"],
            ("--max-parallel",),
        ),
    ]


# ---- images -------------------------------------------------------------------------------


@dataclass
class ImageCase:
    name: str
    item_id: int
    write: Callable[[Path], None]
    status: str  # what status.csv must record for the item


def _save(mode: str, size=(48, 48), fmt="JPEG", **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(len(mode))
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16))
        else:
            img = Image.new(mode, size, color=(10, 100, 200, 0)[: len(mode)] if mode != "L" else 90)
        img.save(path, format=fmt, **kw)

    return write


def _truncated_jpeg(path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])


def _bomb_png(path: Path) -> None:
    """A valid PNG header claiming 40000 x 40000 pixels (PIL refuses it as a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _huge_jpeg(path: Path) -> None:
    from PIL import Image

    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(path, quality=50)


def image_cases() -> list[ImageCase]:
    return [
        ImageCase("images: zero bytes", 11, lambda p: p.write_bytes(b""), "corrupt"),
        ImageCase("images: truncated JPEG", 12, _truncated_jpeg, "corrupt"),
        ImageCase("images: PNG named .jpg", 13, _save("RGB", fmt="PNG"), "ok"),
        ImageCase("images: CMYK JPEG", 14, _save("CMYK"), "ok"),
        ImageCase("images: grayscale", 15, _save("L"), "ok"),
        ImageCase("images: 16-bit PNG", 16, _save("I;16", fmt="PNG"), "ok"),
        ImageCase("images: decompression bomb", 17, _bomb_png, "corrupt"),
        ImageCase("images: huge but valid (4000x3000)", 18, _huge_jpeg, "ok"),
        ImageCase("images: unreadable (a folder named 19.jpg)", 19, lambda p: p.mkdir(), "corrupt"),
        ImageCase("images: text named .jpg", 20, lambda p: p.write_text("not an image"), "corrupt"),
        ImageCase("images: RGBA PNG with alpha", 21, _save("RGBA", fmt="PNG"), "ok"),
    ]


def run_image_cases(ws: Workspace, cases: list[ImageCase]) -> list[Outcome]:
    """One generate_embeddings run over the image folder with every bad file in it."""
    import csv

    images = ws.data / "item_images"
    for case in cases:
        for old in images.glob(f"{case.item_id}.*"):
            old.unlink()
        case.write(images / f"{case.item_id}.jpg")
    out = ws.root / "emb" / "items.parquet"
    res = run_entry("embed", [
        "--item-info", str(ws.data / "item_info.parquet"), "--image-dir", str(images),
        "--model", str(ws.root / "tiny_clip"), "--out", str(out), "--dim", "8",
        "--num-workers", "0", "--no-progress", "--batch-size", "64",
    ])  # fmt: skip
    status: dict[int, str] = {}
    if res.code == 0:
        with open(out.with_name("items.status.csv"), newline="") as fh:
            status = {int(r["item_id"]): r["status"] for r in csv.DictReader(fh)}
        emb = np.asarray(pq.read_table(out).column("item_emb_d128").to_pylist(), dtype=np.float32)
    outcomes = []
    for case in cases:
        got = status.get(case.item_id, f"run failed ({res.code})")
        right = got == case.status
        if right and got == "corrupt":
            right = not emb[case.item_id].any()  # a corrupt image gets the all-zero vector
        outcomes.append(Outcome(case.name, right, res.traceback, [], f"status {got}"))
    return outcomes


# ---- running the corpus ---------------------------------------------------------------------


def run_case(case: Case, base: Workspace, scratch: Path) -> Outcome:
    ws = copy_workspace(base, scratch)
    args = case.prepare(ws)
    before = snapshot(ws.root)
    res = run_entry(case.command, args)
    left = changes(before, snapshot(ws.root))
    lines = res.error_lines
    named = (
        res.code != 0
        and len(lines) == 1
        and all(w.lower() in lines[0].lower() for w in case.expect)
    )
    if (ws.root / "pwned").exists():
        named, left = False, [*left, "pwned (the checkpoint's code ran)"]
    detail = (
        lines[0]
        if len(lines) == 1
        else f"exit {res.code}, {len(lines)} error lines: {res.stderr[-600:]}"
    )
    shutil.rmtree(ws.root, ignore_errors=True)
    return Outcome(case.name, named, res.traceback, left, detail)


def _first_run(case: Case) -> Case:
    """``case`` with no run folder yet: a failed first run must not leave one behind."""

    def prepare(ws: Workspace) -> list[str]:
        shutil.rmtree(ws.model_root)
        return case.prepare(ws)

    return Case(f"{case.name}, first run", case.command, prepare, case.expect)


def all_cases() -> list[Case]:
    first = [_first_run(c) for c in parquet_cases() if c.command == "train"][:3]
    return [*parquet_cases(), *first, *yaml_cases(), *tuner_cases(), *cli_cases()]
