"""Stage 1: item images -> CLIP image features -> PCA -> ``item_emb_d128`` in item_info.

:func:`generate_embeddings` is the whole stage; ``generate_embeddings.py`` only parses its
arguments. The work, in order:

1. read item_info and check the item ids (integers, row index == item_id; item 0 is the
   padding row) and the column to write (not ``item_id``; if present, a list of floats; no
   other column is looked at), check ``out``, the cache folder and a given ``pca`` file
   (its model by content, see :func:`model_digest`), and index the image folder
   (``<item_id>.jpg``);
2. split the rows into shards of ``shard_size`` items; a shard whose cache file exists, with
   the same items, image files (name, size, mtime) and model, is reused; the others are
   encoded (decoding in DataLoader workers, the model on every chosen GPU through
   ``nn.DataParallel``) and written to the cache one file at a time, so a killed run
   resumes where it stopped. In a stale shard, every item whose own file is unchanged keeps
   its cached features (items appended to the last shard do not re-encode the old ones, whose
   features would move in the last bits in other batches); only new or changed items are
   encoded (``force``: all);
3. fit PCA on the ``ok`` items only (fixed seed), or load the one given as ``pca`` (then
   items embedded before keep their vectors bit for bit), and project them; the padding row
   and every missing or corrupt item get an all-zero vector;
4. write the PCA (``<stem>.pca.npz``; a different PCA already there is first kept as
   ``<stem>.pca.prev.npz``, never silently lost), a per-item status table, and LAST item_info
   with the column replaced (every other column and row unchanged): the parquet write commits
   the run, so a run killed before it leaves the old vectors, which the PCA kept as .prev
   still reproduces.

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) rank 0's image-file fingerprints are
broadcast (each node may read its own copy of the image folder, with its own mtimes), each
rank encodes the shards ``rank, rank + world, ...`` on its own device, all ranks meet and
gather their counts, and rank 0 merges the shards (the cache folder must be on a filesystem
all ranks see), fits the PCA, writes and reports the totals of every rank; the other ranks
return at once.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmctr.atomic import atomic_open, atomic_write_bytes, atomic_write_parquet
from mmctr.embedding.encoder import (
    DEFAULT_MODEL,
    ImageFeatureExtractor,
    ModelSpec,
    describe_model,
    load_image_model,
    make_parallel,
    model_digest,
    resolve_amp,
    resolve_devices,
)
from mmctr.embedding.images import (
    CORRUPT,
    MISSING,
    NO_FILE,
    OK,
    PADDING,
    STATUS_NAMES,
    EmbeddingError,
    ItemImageDataset,
    index_image_dir,
    item_fingerprint,
    make_loader,
    shard_fingerprint,
    split_processor,
)
from mmctr.embedding.pca import PCAProjection, fit_pca, load_pca, project, save_pca
from mmctr.log import get_logger
from mmctr.runtime import flush_denormals

DEFAULT_COLUMN = "item_emb_d128"
CACHE_FORMAT = 1
# The ranks meet at one barrier after encoding; a slow rank may take hours on a CPU.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


def output_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """(status table, PCA file) written next to the output parquet ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.status.csv"), out.with_name(f"{out.stem}.pca.npz")


@dataclass
class _Shard:
    index: int
    start: int
    stop: int
    fingerprint: str
    path: Path
    item_fps: list[str] | None = None  # per item (images.item_fingerprint), rows start:stop


class _Model:
    """The image model, loaded at most once per run, and its content digest (computed at
    load, on the CPU, before the model moves to a device)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._model: torch.nn.Module | None = None
        self._digest: str | None = None

    def get(self) -> torch.nn.Module:
        if self._model is None:
            self._model = load_image_model(self.spec)
            self._digest = model_digest(self._model, self.spec)
        return self._model

    def digest(self) -> str:
        if self._digest is None:
            self.get()
        assert self._digest is not None
        return self._digest

    def release(self) -> None:
        """Drop the model (and its device memory); the digest stays."""
        self._model = None


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _torchrun_env() -> _Dist:
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(k in os.environ for k in keys):
        return _Dist()
    rank, world, local = (int(os.environ[k]) for k in keys)
    return _Dist(rank, world, local) if world > 1 else _Dist()


def _init_distributed(dist_ctx: _Dist, device: torch.device) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    kwargs: dict[str, Any] = {"timeout": BARRIER_TIMEOUT}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        kwargs.update(backend="nccl", device_id=device)
    else:
        kwargs.update(backend="gloo")
    dist.init_process_group(**kwargs)
    dist_ctx.created_group = True


def _barrier(device: torch.device) -> None:
    import torch.distributed as dist

    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def _share_fingerprints(item_fps: list[str], ids: np.ndarray, rank: int, log: Any) -> list[str]:
    """Rank 0's item fingerprints on every rank (broadcast): all ranks key and check the
    shards by the same files, also when each node reads its own copy of the image folder
    (copies have their own mtimes). A rank whose copy differs in more than mtimes warns."""
    import torch.distributed as dist

    box: list[Any] = [(len(ids), item_fps) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    n, theirs = box[0]
    if n != len(ids):
        raise EmbeddingError(
            f"rank {rank} reads {len(ids)} items from --item-info but rank 0 reads {n}; every "
            "rank must see the same item_info"
        )
    if rank != 0:

        def name_size(fp: str) -> str:
            return fp.rsplit("|", 1)[0]

        differ = [
            i for i, (a, b) in enumerate(zip(item_fps, theirs)) if name_size(a) != name_size(b)
        ]
        if differ:
            log.warning(
                "rank %d: %d item image(s) differ from rank 0's in name or size (e.g. item %d: "
                "%s here, %s on rank 0); this rank encodes its own copies",
                rank,
                len(differ),
                int(ids[differ[0]]),
                item_fps[differ[0]],
                theirs[differ[0]],
            )
    return list(theirs)


def _gather_stats(mine: dict[str, Any]) -> list[dict[str, Any]]:
    import torch.distributed as dist

    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def _rank_devices(gpu: int | Sequence[int] | None, dist_ctx: _Dist) -> list[torch.device]:
    """Devices of this process. Single process: every chosen GPU. Under torchrun: one device
    per rank (``cuda:LOCAL_RANK``, or the LOCAL_RANK-th entry of ``--gpu``)."""
    if not dist_ctx.active:
        return resolve_devices(gpu)
    if gpu is None or (not isinstance(gpu, (int, str)) and len(gpu) == 0):
        if torch.cuda.is_available():
            return resolve_devices([dist_ctx.local_rank])
        return [torch.device("cpu")]
    ids = [int(gpu)] if isinstance(gpu, (int, str)) else [int(g) for g in gpu]
    if ids == [-1]:
        return [torch.device("cpu")]
    if dist_ctx.local_rank >= len(ids):
        raise EmbeddingError(
            f"--gpu {ids} names {len(ids)} GPU(s) but this is local rank "
            f"{dist_ctx.local_rank}; under torchrun give one GPU per local rank or omit --gpu"
        )
    return resolve_devices([ids[dist_ctx.local_rank]])


def _check_out(out: Path) -> None:
    """Refuse an output path that cannot be written, before any work."""
    status_path, pca_path = output_paths(out)
    for name, target in (("--out", out), ("status file", status_path), ("PCA file", pca_path)):
        if target.is_dir():
            raise EmbeddingError(
                f"{name} {target} is a directory; --out must name a .parquet file "
                f"(e.g. {target / 'item_info.parquet'})"
            )
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise EmbeddingError(f"--out {out}: {parent} is a file, not a folder")


def _check_column(table: Any, column: str, path: Path) -> None:
    """The column stage 1 writes: never ``item_id``; an existing column is replaced only if
    it holds lists of floats (an earlier embedding), never another kind of column."""
    import pyarrow.types as pat

    if not column:
        raise EmbeddingError("--column must name a column (default item_emb_d128)")
    if column == "item_id":
        raise EmbeddingError(
            "--column item_id: that is the item id column, which stage 1 reads; name the "
            f"embedding column instead (default {DEFAULT_COLUMN})"
        )
    if column not in table.column_names:
        return
    kind = table.schema.field(column).type
    is_list = pat.is_list(kind) or pat.is_large_list(kind) or pat.is_fixed_size_list(kind)
    if not (is_list and pat.is_floating(kind.value_type)):
        raise EmbeddingError(
            f"--column {column}: --item-info {path} already has a column {column!r} of type "
            f"{kind}, not a list of floats (an embedding); stage 1 would overwrite it. Pass "
            f"another --column (default {DEFAULT_COLUMN}) or drop that column first"
        )


def _prepare_cache(cache: Path, given: bool) -> None:
    """Create the feature cache folder, or say in one line why it cannot be one."""
    name = f"--cache-dir {cache}" if given else f"feature cache {cache} (see --cache-dir)"
    if cache.exists() and not cache.is_dir():
        raise EmbeddingError(f"{name} is a file, not a folder")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddingError(f"{name}: cannot create it ({exc.strerror or exc})") from exc
    if not os.access(cache, os.W_OK | os.X_OK):
        raise EmbeddingError(f"{name}: no permission to write in this folder")


def _item_ids(col: Any, path: Path) -> np.ndarray:
    """The item_id column as int64; integer types, or floats holding whole numbers."""
    import pyarrow.types as pat

    where = f"--item-info {path}: column item_id"
    if col.null_count:
        raise EmbeddingError(f"{where} has {col.null_count} nulls; expected integer item ids")
    if pat.is_integer(col.type):
        return np.asarray(col.to_numpy(), dtype=np.int64)
    if pat.is_floating(col.type):
        values = np.asarray(col.to_numpy(), dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if not bad.any():
            return values.astype(np.int64)
        raise EmbeddingError(
            f"{where} holds {col.type} values such as {float(values[bad][0])!r}; expected integer "
            "item ids (row index == item_id)"
        )
    raise EmbeddingError(
        f"{where} has type {col.type}; expected integer item ids (row index == item_id)"
    )


def _read_item_info(path: Path) -> tuple[Any, np.ndarray]:
    """Read item_info and check what stage 1 relies on: integer item ids equal to the row
    index (the data contract: row 0 is the padding item). Other columns are not looked at."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise EmbeddingError(f"--item-info {path}: no such file")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise EmbeddingError(f"--item-info {path}: cannot read it as parquet ({exc})") from exc
    if table.num_rows == 0:
        raise EmbeddingError(f"--item-info {path} has no rows")
    if "item_id" not in table.column_names:  # the contract: row index == item_id
        return table, np.arange(table.num_rows, dtype=np.int64)
    ids = _item_ids(table.column("item_id"), path)
    wrong = np.flatnonzero(ids != np.arange(len(ids)))
    if len(wrong):
        row = int(wrong[0])
        raise EmbeddingError(
            f"--item-info {path}: row {row} has item_id {int(ids[row])}; expected item_id == "
            "row index (0, 1, 2, ...; row 0 is the padding item). Sort the table by item_id "
            "and fill the gaps"
        )
    return table, ids


def _load_pca_for(path: Path, model: _Model, dim: int | None) -> PCAProjection:
    """Load ``--pca path`` and check that it fits the model's features and ``dim``. The
    model is compared by content (:func:`model_digest`, which loads its weights); a PCA file
    written before digests were recorded is compared by model name."""
    spec = model.spec
    where = f"--pca {path}"
    if not path.is_file():
        raise EmbeddingError(f"{where}: no such file")
    try:
        pca = load_pca(path)
    except Exception as exc:
        raise EmbeddingError(
            f"{where}: cannot read it as a PCA file written by stage 1 ({exc})"
        ) from exc
    if spec.raw_dim is not None and spec.raw_dim != pca.raw_dim:
        raise EmbeddingError(
            f"{where} projects {pca.raw_dim}-d features, but --model {spec.name} gives "
            f"{spec.raw_dim}-d features; use the PCA fit on this model's features"
        )
    if pca.model_digest:
        digest = model.digest()
        if digest != pca.model_digest:
            raise EmbeddingError(
                f"{where} was fit on the features of model {pca.model!r} (content digest "
                f"{pca.model_digest[:12]}), but --model {spec.name!r} has other weights, "
                f"config or image processor (digest {digest[:12]}); pass the model the PCA "
                "was fit with, or fit a new PCA (omit --pca)"
            )
    elif pca.model and not _same_model(pca.model, spec):
        raise EmbeddingError(
            f"{where} was fit on the features of model {pca.model!r}, not --model "
            f"{spec.name!r}; pass that model, or fit a new PCA (omit --pca)"
        )
    if dim is not None and dim != pca.dim:
        raise EmbeddingError(
            f"--dim {dim} does not match {where}, which gives {pca.dim}-d vectors "
            f"(omit --dim or pass --dim {pca.dim})"
        )
    return pca


def _same_model(recorded: str, spec: ModelSpec) -> bool:
    """For PCA files without a model digest (written before it was recorded): a hub name and
    a save_pretrained folder of it match by the last path component
    (``openai/clip-vit-base-patch32`` == ``/models/clip-vit-base-patch32``)."""
    if recorded in (spec.name, spec.source):
        return True
    last = Path(recorded.rstrip("/\\")).name
    return bool(last) and last == Path(spec.name.rstrip("/\\")).name


def _save_pca_keeping_previous(pca: PCAProjection, path: Path, log: Any) -> Path | None:
    """Save ``pca`` to ``path``. A different PCA already there is first copied to
    ``<stem>.prev.npz`` (one generation) and its path returned; an identical one is left."""
    previous = None
    if path.is_file():
        try:
            old = load_pca(path)
            same = np.array_equal(old.components, pca.components) and np.array_equal(
                old.mean, pca.mean
            )
        except Exception:  # unreadable: keep its bytes all the same
            same = False
        if same:
            return None
        previous = path.with_name(f"{path.stem}.prev.npz")
        atomic_write_bytes(previous, path.read_bytes())
        log.warning(
            "the PCA changed, so every item's vector changed; the previous PCA is kept as %s "
            "(a model trained on the old vectors needs them: rerun with --pca %s)",
            previous,
            previous,
        )
    save_pca(pca, path)
    return previous


def _cache_key(spec: ModelSpec, amp_dtype: torch.dtype | None) -> str:
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32"
    return hashlib.sha1(f"{CACHE_FORMAT}|{spec.fingerprint}|{amp_name}".encode()).hexdigest()


def _shard_problem(shard: _Shard, model_key: str) -> str | None:
    """Why the cache file of ``shard`` cannot be used as it is (None: it can)."""
    if not shard.path.is_file():
        return "missing"
    try:
        with np.load(shard.path, allow_pickle=False) as z:
            if str(z["model"]) != model_key:
                return "model"
            if str(z["fingerprint"]) != shard.fingerprint:
                return "fingerprint"
    except Exception:  # a foreign or damaged file is simply recomputed
        return "unreadable"
    return None


def _write_shard(
    shard: _Shard,
    model_key: str,
    item_ids: np.ndarray,
    features: np.ndarray,
    status: np.ndarray,
    errors: list[str],
) -> None:
    item_fps = shard.item_fps if shard.item_fps is not None else [""] * len(item_ids)
    with atomic_open(shard.path, "wb") as fh:
        np.savez(
            fh,
            item_ids=np.asarray(item_ids, dtype=np.int64),
            features=np.asarray(features, dtype=np.float32),
            status=np.asarray(status, dtype=np.int8),
            errors=np.array(errors, dtype=str),
            fingerprint=np.array(shard.fingerprint),
            item_fps=np.array(item_fps, dtype=str),
            model=np.array(model_key),
        )


_STALE = {
    "missing": "does not exist after every rank finished; under torchrun the --cache-dir must "
    "be on a filesystem that all ranks share (a rank wrote it into its own local folder?)",
    "fingerprint": "was written for other image files (their name/size/mtime fingerprint "
    "differs from this run's); did the image folder or item_info change while the ranks ran? "
    "Rerun",
    "model": "was written by another model or --amp setting than this run's; did another run "
    "use the same --cache-dir at the same time? Rerun",
    "unreadable": "cannot be read (damaged, or being written by another run?); rerun",
}


def _read_shard(shard: _Shard, model_key: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    problem = _shard_problem(shard, model_key)
    if problem is not None:
        raise EmbeddingError(f"feature shard {shard.path} {_STALE[problem]}")
    with np.load(shard.path, allow_pickle=False) as z:
        data = {k: z[k] for k in ("item_ids", "features", "status", "errors")}
    if not np.array_equal(data["item_ids"], ids[shard.start : shard.stop]):
        raise EmbeddingError(f"feature shard {shard.path} holds other items; rerun with --force")
    return data


def _probe_raw_dim(runner: torch.nn.Module, processor: Any) -> int:
    from PIL import Image

    blank = Image.new("RGB", (32, 32))
    pixels = torch.from_numpy(processor(images=blank, return_tensors="np")["pixel_values"])
    return int(runner(pixels).shape[-1])


def _reusable_items(
    shard: _Shard, model_key: str, ids: np.ndarray
) -> tuple[dict[int, int], dict[str, np.ndarray] | None]:
    """The items of a stale ``shard`` that its old cache file still holds for the same image
    file (same item fingerprint, same model): {row: index in the old file}, and the old
    file's arrays. Items whose file vanished between the folder scan and decoding (status
    missing with a fingerprint) are not reused."""
    if shard.item_fps is None or not shard.path.is_file():
        return {}, None
    try:
        with np.load(shard.path, allow_pickle=False) as z:
            if "item_fps" not in z.files or str(z["model"]) != model_key:
                return {}, None
            old = {k: z[k] for k in ("item_ids", "item_fps", "features", "status", "errors")}
    except Exception:  # a foreign or damaged file: nothing to reuse
        return {}, None
    where = {int(i): k for k, i in enumerate(old["item_ids"])}
    reuse = {}
    for row, fp in zip(range(shard.start, shard.stop), shard.item_fps):
        k = where.get(int(ids[row]))
        if k is None or str(old["item_fps"][k]) != fp:
            continue
        if int(old["status"][k]) == MISSING and fp != NO_FILE:
            continue
        reuse[row] = k
    return reuse, old


@dataclass
class _EncodeResult:
    images: int = 0  # sent to the model
    reused: int = 0  # items of rewritten shards taken from their old cache file
    seconds: float = 0.0


def _encoding_plan(
    shards: list[_Shard], model_key: str, ids: np.ndarray, force: bool
) -> tuple[list[tuple[dict[int, int], Any]], list[list[int]]]:
    """Per shard: (the items its old cache file still holds, that file), and the rows to
    encode (all of them with ``force``)."""
    plans = [_reusable_items(s, model_key, ids) if not force else ({}, None) for s in shards]
    todo_rows = [
        [r for r in range(s.start, s.stop) if r not in reuse]
        for s, (reuse, _) in zip(shards, plans)
    ]
    return plans, todo_rows


def _image_pipeline(
    model: _Model,
    item_ids: np.ndarray,
    paths: list[str | None],
    devices: list[torch.device],
    amp_dtype: torch.dtype | None,
    batch_size: int,
    num_workers: int,
    log: Any,
) -> tuple[Any, int, Any]:
    """(the model on the devices, its feature width, the decode loader of ``paths``); the
    workers ship uint8 pixels when :func:`split_processor` allows it."""
    spec = model.spec
    pixel_norm, how = split_processor(spec.processor)
    log.info("preprocessing: %s", how if pixel_norm is not None else f"whole processor ({how})")
    extractor = ImageFeatureExtractor(model.get(), amp_dtype, pixel_norm)
    runner = make_parallel(extractor, devices)
    raw_dim = spec.raw_dim or _probe_raw_dim(runner, spec.processor)
    dataset = ItemImageDataset(item_ids, paths, spec.processor, uint8=pixel_norm is not None)
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=devices[0].type == "cuda")
    return runner, raw_dim, loader


def _shard_arrays(
    s: _Shard,
    local: np.ndarray,
    encoded: tuple[np.ndarray, np.ndarray, list[str]],
    reuse: dict[int, int],
    old: dict[str, Any] | None,
    raw_dim: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One shard's features, status and errors: its encoded rows (at ``local`` positions)
    and the rows reused from its old cache file."""
    size = s.stop - s.start
    feats = np.zeros((size, raw_dim), dtype=np.float32)
    st = np.zeros(size, dtype=np.int8)
    errs = [""] * size
    feats[local], st[local] = encoded[0], encoded[1]
    for j, e in zip(local, encoded[2]):
        errs[j] = e
    for row, k in reuse.items():
        assert old is not None
        feats[row - s.start] = old["features"][k]
        st[row - s.start] = old["status"][k]
        errs[row - s.start] = str(old["errors"][k])
    return feats, st, errs


def _encode(
    shards: list[_Shard],
    ids: np.ndarray,
    paths: list[str | None],
    model: _Model,
    model_key: str,
    devices: list[torch.device],
    amp_dtype: torch.dtype | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    force: bool,
    log: Any,
) -> _EncodeResult:
    """Encode the items of ``shards`` and write one cache file per shard as soon as its last
    item is done. Items whose image file is unchanged since the shard's old cache file are
    taken from it (not with ``force``), so only new and changed items reach the model. The
    workers ship uint8 pixels when :func:`split_processor` allows it."""
    from mmctr.progress import Progress

    spec = model.spec
    plans, todo_rows = _encoding_plan(shards, model_key, ids, force)
    rows = np.array([r for rs in todo_rows for r in rs], dtype=np.int64)
    ends = np.cumsum([len(rs) for rs in todo_rows])
    n_reused = sum(len(reuse) for reuse, _ in plans)

    runner, loader = None, []
    if len(rows):
        runner, raw_dim, loader = _image_pipeline(
            model,
            ids[rows],
            [paths[r] for r in rows],
            devices,
            amp_dtype,
            batch_size,
            num_workers,
            log,
        )
    else:
        raw_dim = next(old["features"].shape[1] for _, old in plans if old is not None)
    log.info(
        "encoding %d items (%d shard(s); %d unchanged item(s) of them from the cache) with "
        "%s on %s, batch %d, %d decode worker(s)",
        len(rows),
        len(shards),
        n_reused,
        spec.name,
        ", ".join(map(str, devices)),
        batch_size,
        num_workers,
    )

    features = np.zeros((len(rows), raw_dim), dtype=np.float32)
    status = np.zeros(len(rows), dtype=np.int8)
    errors = [""] * len(rows)
    pos, done_shards, n_encoded = 0, 0, 0

    def write_done() -> None:
        nonlocal done_shards
        while done_shards < len(shards) and pos >= ends[done_shards]:
            s = shards[done_shards]
            reuse, old = plans[done_shards]
            lo = int(ends[done_shards - 1]) if done_shards else 0
            local = np.array(todo_rows[done_shards], dtype=np.int64) - s.start
            hi = lo + len(local)
            encoded = (features[lo:hi], status[lo:hi], errors[lo:hi])
            feats, st, errs = _shard_arrays(s, local, encoded, reuse, old, raw_dim)
            _write_shard(s, model_key, ids[s.start : s.stop], feats, st, errs)
            done_shards += 1

    start = time.perf_counter()
    write_done()  # shards whose every item comes from the cache
    with Progress(len(rows), "embed", unit="img", enabled=progress) as bar:
        for batch in loader:
            n = len(batch.item_ids)
            st = batch.status.numpy()
            status[pos : pos + n] = st
            errors[pos : pos + n] = batch.errors
            if batch.pixel_values.numel():
                # The wrapper itself is called: DataParallel scatters the batch over the GPUs.
                assert runner is not None
                out = runner(batch.pixel_values)
                features[pos + np.flatnonzero(st == OK)] = out.float().cpu().numpy()
                n_encoded += int(batch.pixel_values.shape[0])
            pos += n
            bar.update(n)
            write_done()
    return _EncodeResult(n_encoded, n_reused, time.perf_counter() - start)


def _check_vectors(vectors: np.ndarray, ids: np.ndarray, out: Path, column: str) -> str | None:
    """What stage 1 promises about the column it writes: finite, the padding row (item 0)
    all zero; raised before ``out`` is written. The width is ``dim`` by construction; a
    column name that says another width (``..._d128`` holding 64-d vectors) is returned as
    a warning (the name is the user's choice, but the data contract reads it)."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise EmbeddingError(
            f"{out}: {column} would hold NaN/inf for {len(bad)} item(s), e.g. item "
            f"{int(ids[bad[0]])}; not written (try --amp none)"
        )
    pad = np.flatnonzero(ids == 0)
    if len(pad) and np.any(vectors[pad[0]] != 0):
        raise EmbeddingError(f"{out}: {column} row 0 (padding) is not all zero; not written")
    named = re.search(r"_d(\d+)$", column)
    width = int(vectors.shape[1])
    if named and int(named.group(1)) != width:
        return (
            f"{column} holds {width}-d vectors, but its name says d{named.group(1)}; readers "
            f"that trust the name will be wrong (pass --column ..._d{width} or --dim "
            f"{named.group(1)})"
        )
    return None


def _planted_faults(image_dir: Path) -> dict[int, str]:
    """item_id -> fault of ``<image_dir>_manifest.csv``, the list of faults the demo
    generator planted on purpose (mmctr.data.demo); {} when there is none."""
    manifest = image_dir.parent / f"{image_dir.name}_manifest.csv"
    try:
        with open(manifest, encoding="utf-8", newline="") as fh:
            return {int(r["item_id"]): str(r["status"]) for r in csv.DictReader(fh)}
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def _status_table(ids: np.ndarray, status: np.ndarray, errors: np.ndarray, path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "item_id": ids,
            "status": np.asarray(STATUS_NAMES, dtype=object)[status],
            "error": errors,
        }
    )
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        frame.to_csv(fh, index=False)


def generate_embeddings(
    item_info: str | os.PathLike,
    image_dir: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    out: str | os.PathLike | None = None,
    column: str = DEFAULT_COLUMN,
    dim: int | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
    gpu: int | Sequence[int] | None = None,
    amp: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    shard_size: int = 4096,
    seed: int = 2025,
    progress: bool = True,
    pca: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Encode every item's image, reduce to ``dim`` with PCA, write ``column`` into item_info.

    Args:
        item_info: item_info.parquet (row index == item_id, row 0 = padding).
        image_dir: folder of ``<item_id>.jpg`` images (other image extensions work too).
        model: a CLIP checkpoint: hub name or a folder written by ``save_pretrained``.
        out: output parquet; default: ``item_info`` itself (replaced atomically).
        column: the embedding column to write (replaced if present, else appended); not
            ``item_id``, and an existing column must hold lists of floats.
        dim: PCA width (default 128, or the width of ``pca``).
        batch_size: images per model call (split across the GPUs).
        num_workers: decoding processes (default ``min(8, cpu count)``; 0 = in process).
        gpu: GPU indices (default: every visible GPU; -1: CPU).
        amp: "none" | "bf16" | "fp16" autocast (default bf16 on CUDA, none on the CPU).
        cache_dir: raw feature shards (default ``<out dir>/.emb_cache/<model>-<key>/``).
        force: recompute every shard and item. shard_size: items per cache file.
        seed: PCA seed.
        pca: a PCA file written by an earlier run (``<stem>.pca.npz``): project with it
            instead of fitting a new one, so items already embedded keep their vectors bit
            for bit. Without it a new PCA is fit; a different PCA file already next to
            ``out`` is kept as ``<stem>.pca.prev.npz``.

    Returns:
        A summary dict: output paths, per-status counts, explained variance, shards
        computed (written) and reused, items reused from rewritten shards, images encoded,
        images/s, ``warnings``. Under torchrun rank 0's counts are the totals of every rank
        (images/s: all images over the slowest rank's encoding time; ``per_rank`` holds each
        rank's own), and the ranks other than 0 return ``{"rank": r, "role": "worker", ...}``
        with their own counts, without writing any output.

    Raises:
        EmbeddingError: bad paths, item ids, column, cache folder, model, options or
            ``pca``, or too few decodable images for the PCA.
    """
    flush_denormals()  # before torch's thread pool starts (see runtime.py)
    log = get_logger("mmctr.embedding")
    num_workers = _check_options(dim, batch_size, shard_size, num_workers)
    item_info = Path(item_info)
    out = Path(out) if out is not None else item_info
    _check_out(out)
    dist_ctx = _torchrun_env()
    devices = _rank_devices(gpu, dist_ctx)
    amp_dtype = resolve_amp(amp, devices[0])
    table, ids = _read_item_info(item_info)
    _check_column(table, column, item_info)
    refs = index_image_dir(image_dir)
    ref_list = [None if i == 0 else refs.get(int(i)) for i in ids]
    spec = describe_model(model)
    model_key = _cache_key(spec, amp_dtype)
    cache = (
        Path(cache_dir)
        if cache_dir is not None
        else out.parent / ".emb_cache" / f"{spec.slug}-{model_key[:12]}"
    )
    image_model = _Model(spec)
    given_pca = _load_pca_for(Path(pca), image_model, dim) if pca is not None else None
    _prepare_cache(cache, given=cache_dir is not None)  # after the checks: a refusal makes nothing
    dim = _pca_dim(dim, given_pca, spec)
    job = _Job(ids, ref_list, cache, image_model, model_key, devices, amp_dtype, dist_ctx)
    shards, own, per_rank = _encode_shards(
        job, shard_size, batch_size, num_workers, force, progress, log
    )
    common = _run_summary(job, shards, own, per_rank)
    if dist_ctx.rank != 0:
        return {**common, "role": "worker", "out": None}
    return _write_embeddings(
        job, shards, table, out, column, dim, seed, pca, given_pca, image_dir, common, log
    )


def _check_options(
    dim: int | None, batch_size: int, shard_size: int, num_workers: int | None
) -> int:
    """The options checked before anything is read; the number of decode workers."""
    if dim is not None and int(dim) < 1:
        raise EmbeddingError(f"--dim must be >= 1, got {dim}")
    if int(batch_size) < 1:
        raise EmbeddingError(f"--batch-size must be >= 1, got {batch_size}")
    if int(shard_size) < 1:
        raise EmbeddingError(f"--shard-size must be >= 1, got {shard_size}")
    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    if num_workers < 0:
        raise EmbeddingError(f"--num-workers must be >= 0, got {num_workers}")
    return num_workers


def _pca_dim(dim: int | None, given_pca: PCAProjection | None, spec: ModelSpec) -> int:
    """The output width: ``--dim``, else the given PCA's, else 128; never above the model's."""
    if dim is None:
        dim = given_pca.dim if given_pca is not None else 128
    if spec.raw_dim is not None and dim > spec.raw_dim:  # fail before hours of encoding
        raise EmbeddingError(
            f"--dim {dim} is larger than the model's feature width {spec.raw_dim}; PCA can "
            f"only reduce (use --dim {spec.raw_dim} or less)"
        )
    return dim


@dataclass
class _Job:
    """What every stage of one :func:`generate_embeddings` run reads."""

    ids: np.ndarray
    refs: list[Any]
    cache: Path
    image_model: Any
    model_key: str
    devices: list[torch.device]
    amp_dtype: Any
    dist_ctx: Any


def _encode_shards(
    job: _Job,
    shard_size: int,
    batch_size: int,
    num_workers: int,
    force: bool,
    progress: bool,
    log: logging.Logger,
) -> tuple[list[_Shard], dict[str, Any], list[dict[str, Any]]]:
    """Encode this rank's shards that are missing or stale: (every shard, this rank's
    counts, every rank's counts)."""
    ids, dist_ctx, devices = job.ids, job.dist_ctx, job.devices
    n = len(ids)
    paths = [None if r is None else r.path for r in job.refs]
    item_fps = [item_fingerprint(r) for r in job.refs]
    if dist_ctx.active:
        _init_distributed(dist_ctx, devices[0])
    result = _EncodeResult()
    try:
        if dist_ctx.active:
            item_fps = _share_fingerprints(item_fps, ids, dist_ctx.rank, log)
        shards = []
        for k, lo in enumerate(range(0, n, shard_size)):
            hi = min(lo + shard_size, n)
            fps = item_fps[lo:hi]
            fp = shard_fingerprint(ids[lo:hi], fps)
            shards.append(_Shard(k, lo, hi, fp, job.cache / f"shard_{k:05d}.npz", fps))
        mine = [s for s in shards if s.index % dist_ctx.world_size == dist_ctx.rank]
        todo = [s for s in mine if force or _shard_problem(s, job.model_key) is not None]
        log.info(
            "%d items, %d shard(s) of %d; cache %s; %d shard(s) to encode%s",
            n,
            len(shards),
            shard_size,
            job.cache,
            len(todo),
            f" on rank {dist_ctx.rank}/{dist_ctx.world_size}" if dist_ctx.active else "",
        )
        if todo:
            result = _encode(
                todo,
                ids,
                paths,
                job.image_model,
                job.model_key,
                devices,
                job.amp_dtype,
                batch_size,
                num_workers,
                progress and dist_ctx.rank == 0,
                force,
                log,
            )
            job.image_model.release()
        own = {
            "rank": dist_ctx.rank,
            "devices": [str(d) for d in devices],
            "shards_computed": [s.index for s in todo],
            "shards_reused": [s.index for s in mine if s not in todo],
            "images_encoded": result.images,
            "items_reused": result.reused,
            "encode_seconds": result.seconds,
        }
        if dist_ctx.active:
            _barrier(devices[0])
            per_rank = _gather_stats(own)
        else:
            per_rank = [own]
    finally:
        if dist_ctx.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    return shards, own, per_rank


def _run_summary(
    job: _Job, shards: list[_Shard], own: dict[str, Any], per_rank: list[dict[str, Any]]
) -> dict[str, Any]:
    """The summary keys of every rank: rank 0 reports the run (every rank's shards and
    images), the others their own share."""
    dist_ctx, amp_dtype = job.dist_ctx, job.amp_dtype
    report = per_rank if dist_ctx.rank == 0 else [own]
    images = sum(r["images_encoded"] for r in report)
    seconds = max(r["encode_seconds"] for r in report)  # the ranks run side by side
    return {
        "rank": dist_ctx.rank,
        "world_size": dist_ctx.world_size,
        "devices": [str(d) for d in job.devices],
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
        "cache_dir": str(job.cache),
        "shards_total": len(shards),
        "shards_computed": sorted(k for r in report for k in r["shards_computed"]),
        "shards_reused": sorted(k for r in report for k in r["shards_reused"]),
        "images_encoded": images,
        "items_reused": sum(r["items_reused"] for r in report),
        "encode_seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else 0.0,
        "per_rank": per_rank if dist_ctx.rank == 0 else [own],
    }


def _write_embeddings(
    job: _Job,
    shards: list[_Shard],
    table: Any,
    out: Path,
    column: str,
    dim: int,
    seed: int,
    pca: str | os.PathLike | None,
    given_pca: PCAProjection | None,
    image_dir: str | os.PathLike,
    common: dict[str, Any],
    log: logging.Logger,
) -> dict[str, Any]:
    """Rank 0: merge the shards, fit (or apply) the PCA, write the PCA, the status table and
    then the parquet (which commits the run); the summary."""
    ids, spec = job.ids, job.image_model.spec
    status_path, pca_path = output_paths(out)
    parts = [_read_shard(s, job.model_key, ids) for s in shards]
    raw = np.concatenate([p["features"] for p in parts])
    status = np.concatenate([p["status"] for p in parts]).astype(np.int64)
    errors = np.concatenate([p["errors"].astype(object) for p in parts])
    status[ids == 0] = PADDING
    ok = status == OK
    if given_pca is None:
        digest = job.image_model.digest()
        pca_used = fit_pca(raw[ok], dim, seed, model=spec.name, model_digest=digest)
    elif raw.shape[1] != given_pca.raw_dim:  # the model did not say its width up front
        raise EmbeddingError(
            f"--pca {pca} projects {given_pca.raw_dim}-d features, but --model {spec.name} "
            f"gave {raw.shape[1]}-d features; use the PCA fit on this model's features"
        )
    else:
        pca_used = given_pca
    vectors = np.zeros((len(ids), dim), dtype=np.float32)
    vectors[ok] = project(raw[ok], pca_used)
    warning = _check_vectors(vectors, ids, out, column)
    if warning:
        log.warning("%s", warning)
    new_table = _with_column(table, column, vectors)
    # The parquet is written last: it commits the run. Killed before it, the old vectors stay,
    # and the PCA that made them is still on disk (as .prev when this run's PCA differs).
    previous_pca = _save_pca_keeping_previous(pca_used, pca_path, log)
    _status_table(ids, status, errors, status_path)
    atomic_write_parquet(new_table, out)
    counts = {name: int(np.sum(status == code)) for code, name in enumerate(STATUS_NAMES)}
    log.info("status: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    planted, bad = _log_faults(ids, status, errors, Path(image_dir), log)
    log.info(
        "PCA %d -> %d %s keeps %.1f%% of the variance (of the items it was fit on)",
        pca_used.raw_dim,
        dim,
        f"from {pca}" if given_pca is not None else f"fit on {pca_used.n_fit} ok items",
        100 * pca_used.explained_variance,
    )
    return {
        **common,
        "role": "main",
        "out": str(out),
        "status_file": str(status_path),
        "pca_file": str(pca_path),
        "pca_source": str(pca) if given_pca is not None else "fit",
        "pca_previous": str(previous_pca) if previous_pca is not None else None,
        "model": spec.name,
        "column": column,
        "dim": dim,
        "raw_dim": pca_used.raw_dim,
        "n_items": len(ids),
        "counts": counts,
        # missing/corrupt items the demo generator planted on purpose (its manifest), if any
        "planted_faults": len(bad & set(planted)) if planted else None,
        "explained_variance": pca_used.explained_variance,
        "contract_check": "passed",
        "warnings": [warning] if warning else [],
    }


def _with_column(table: Any, column: str, vectors: np.ndarray) -> Any:
    """``table`` with ``column`` (list<float32>) replaced by, or appended as, ``vectors``."""
    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    values = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))
    field = pa.field(column, pa.list_(pa.float32()))
    if column in table.column_names:
        return table.set_column(table.column_names.index(column), field, values)
    return table.append_column(field, values)


def _log_faults(
    ids: np.ndarray, status: np.ndarray, errors: np.ndarray, image_dir: Path, log: logging.Logger
) -> tuple[dict[int, str], set[int]]:
    """Log the first corrupt items and how many faults the demo generator planted:
    (planted faults by item id, the missing or corrupt item ids)."""
    planted = _planted_faults(image_dir)
    bad = {int(i) for i in ids[(status == CORRUPT) | (status == MISSING)]}
    for i in np.flatnonzero(status == CORRUPT)[:5]:
        why = planted.get(int(ids[i]))
        note = f" (expected: planted by the demo generator as {why})" if why else ""
        log.info("corrupt item %d: %s%s", int(ids[i]), errors[i], note)
    if planted:
        log.info(
            "%d of the %d missing/corrupt items are listed in %s_manifest.csv as planted by "
            "the demo generator (expected faults)",
            len(bad & set(planted)),
            len(bad),
            image_dir.name,
        )
    return planted, bad


def summary_lines(s: dict[str, Any]) -> list[str]:
    """:func:`generate_embeddings`'s summary (rank 0's) as a few readable lines."""
    counts = ", ".join(f"{k} {v}" for k, v in s["counts"].items())
    check = s["contract_check"]
    if s["warnings"]:
        check += f", {len(s['warnings'])} warning(s): " + "; ".join(s["warnings"])
    planted = ""
    if s.get("planted_faults"):
        planted = (
            f"; {s['planted_faults']} of the missing/corrupt ones are expected (planted by the "
            "demo generator, item_images_manifest.csv)"
        )
    lines = [
        f"wrote {s['column']} ({s['dim']}-d, list<float32>; output check: {check}) for "
        f"{s['n_items']} items: {s['out']}",
        f"status ({counts}{planted}): {s['status_file']}",
    ]
    how = "fit here" if s["pca_source"] == "fit" else f"from --pca {s['pca_source']}"
    lines.append(
        f"PCA {s['raw_dim']} -> {s['dim']} ({how}) keeps {100 * s['explained_variance']:.1f}% "
        f"of the variance: {s['pca_file']}"
    )
    if s["pca_previous"]:
        lines.append(
            f"the PCA changed (every vector moved); the previous one is kept: "
            f"{s['pca_previous']} (rerun with --pca {s['pca_previous']} to keep the old vectors)"
        )
    ranks = f" on {s['world_size']} ranks" if s["world_size"] > 1 else ""
    reused = f", {s['items_reused']} unchanged item(s) kept" if s["items_reused"] else ""
    lines.append(
        f"raw features: {s['cache_dir']} ({len(s['shards_computed'])} shard(s) written, "
        f"{len(s['shards_reused'])} reused{reused}; {s['images_encoded']} images encoded{ranks} "
        f"in {s['encode_seconds']:.1f} s, {s['images_per_s']:.1f} images/s)"
    )
    return lines
