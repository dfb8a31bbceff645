"""Stage 1: item images -> CLIP image features -> PCA -> ``item_emb_d128`` in item_info.

:func:`generate_embeddings` is the whole stage; ``generate_embeddings.py`` only parses its
arguments. The work, in order:

1. read item_info and check the item ids (integers, row index == item_id; item 0 is the
   padding row; no other column is looked at), check ``out`` and a given ``pca`` file, and
   index the image folder (``<item_id>.jpg``);
2. split the rows into shards of ``shard_size`` items; a shard whose cache file exists, with
   the same items, image files (name, size, mtime) and model, is reused; the others are
   encoded (decoding in DataLoader workers, the model on every chosen GPU through
   ``nn.DataParallel``) and written to the cache one file at a time, so a killed run
   resumes where it stopped;
3. fit PCA on the ``ok`` items only (fixed seed), or load the one given as ``pca`` (then
   items embedded before keep their vectors bit for bit), and project them; the padding row
   and every missing or corrupt item get an all-zero vector;
4. write item_info back with the column replaced (every other column and row unchanged),
   a per-item status table and the PCA (``<stem>.pca.npz``; a different PCA already there
   is kept as ``<stem>.pca.prev.npz``, never silently lost).

Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK set) each rank encodes the shards
``rank, rank + world, ...`` on its own device, all ranks meet at a barrier, and rank 0
merges the shards (the cache folder must be on a filesystem all ranks see), fits the PCA and
writes; the other ranks return at once.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmctr.embedding.encoder import (
    DEFAULT_MODEL,
    ImageFeatureExtractor,
    ModelSpec,
    describe_model,
    load_image_model,
    make_parallel,
    resolve_amp,
    resolve_devices,
)
from mmctr.embedding.images import (
    CORRUPT,
    OK,
    PADDING,
    STATUS_NAMES,
    EmbeddingError,
    ItemImageDataset,
    index_image_dir,
    make_loader,
    refs_fingerprint,
    split_processor,
)
from mmctr.embedding.pca import PCAProjection, fit_pca, load_pca, project, save_pca
from mmctr.utils import atomic_open, atomic_write_bytes, atomic_write_parquet, get_logger

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


def _load_pca_for(path: Path, spec: ModelSpec, dim: int | None) -> PCAProjection:
    """Load ``--pca path`` and check that it fits the model's features and ``dim``."""
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
    if pca.model and not _same_model(pca.model, spec):
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
    """A hub name and a save_pretrained folder of it match by the last path component
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


def _shard_is_valid(shard: _Shard, model_key: str) -> bool:
    if not shard.path.is_file():
        return False
    try:
        with np.load(shard.path, allow_pickle=False) as z:
            return str(z["fingerprint"]) == shard.fingerprint and str(z["model"]) == model_key
    except Exception:  # a foreign or damaged file is simply recomputed
        return False


def _write_shard(
    shard: _Shard,
    model_key: str,
    item_ids: np.ndarray,
    features: np.ndarray,
    status: np.ndarray,
    errors: list[str],
) -> None:
    with atomic_open(shard.path, "wb") as fh:
        np.savez(
            fh,
            item_ids=np.asarray(item_ids, dtype=np.int64),
            features=np.asarray(features, dtype=np.float32),
            status=np.asarray(status, dtype=np.int8),
            errors=np.array(errors, dtype=str),
            fingerprint=np.array(shard.fingerprint),
            model=np.array(model_key),
        )


def _read_shard(shard: _Shard, model_key: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    if not _shard_is_valid(shard, model_key):
        raise EmbeddingError(
            f"feature shard {shard.path} is missing or stale after every rank finished; under "
            "torchrun the --cache-dir must be on a filesystem that all ranks share"
        )
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


def _encode(
    shards: list[_Shard],
    ids: np.ndarray,
    paths: list[str | None],
    spec: ModelSpec,
    model_key: str,
    devices: list[torch.device],
    amp_dtype: torch.dtype | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    log: Any,
) -> tuple[int, float]:
    """Encode the items of ``shards`` and write one cache file per shard as soon as its last
    item is done. Returns (images sent to the model, seconds). The workers ship uint8 pixels
    when :func:`split_processor` allows it."""
    from tqdm.auto import tqdm

    model = load_image_model(spec)
    pixel_norm, how = split_processor(spec.processor)
    log.info("preprocessing: %s", how if pixel_norm is not None else f"whole processor ({how})")
    extractor = ImageFeatureExtractor(model, amp_dtype, pixel_norm)
    runner = make_parallel(extractor, devices)
    raw_dim = spec.raw_dim or _probe_raw_dim(runner, spec.processor)

    rows = np.concatenate([np.arange(s.start, s.stop) for s in shards])
    ends = np.cumsum([s.stop - s.start for s in shards])
    dataset = ItemImageDataset(
        ids[rows], [paths[r] for r in rows], spec.processor, uint8=pixel_norm is not None
    )
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=devices[0].type == "cuda")
    log.info(
        "encoding %d items (%d shard(s)) with %s on %s, batch %d, %d decode worker(s)",
        len(rows),
        len(shards),
        spec.name,
        ", ".join(map(str, devices)),
        batch_size,
        num_workers,
    )

    features = np.zeros((len(rows), raw_dim), dtype=np.float32)
    status = np.zeros(len(rows), dtype=np.int8)
    errors = [""] * len(rows)
    pos, done_shards, n_encoded = 0, 0, 0
    start = time.perf_counter()
    with tqdm(total=len(rows), unit="img", desc="embed", disable=not progress) as bar:
        for batch in loader:
            n = len(batch.item_ids)
            st = batch.status.numpy()
            status[pos : pos + n] = st
            errors[pos : pos + n] = batch.errors
            if batch.pixel_values.numel():
                # The wrapper itself is called: DataParallel scatters the batch over the GPUs.
                out = runner(batch.pixel_values)
                features[pos + np.flatnonzero(st == OK)] = out.float().cpu().numpy()
                n_encoded += int(batch.pixel_values.shape[0])
            pos += n
            bar.update(n)
            while done_shards < len(shards) and pos >= ends[done_shards]:
                lo = int(ends[done_shards - 1]) if done_shards else 0
                hi = int(ends[done_shards])
                _write_shard(
                    shards[done_shards],
                    model_key,
                    ids[rows[lo:hi]],
                    features[lo:hi],
                    status[lo:hi],
                    errors[lo:hi],
                )
                done_shards += 1
    return n_encoded, time.perf_counter() - start


def _check_vectors(vectors: np.ndarray, ids: np.ndarray, out: Path, column: str) -> None:
    """What stage 1 promises about the column it writes: ``dim`` wide, finite, the padding
    row (item 0) all zero. Raised before ``out`` is written."""
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise EmbeddingError(
            f"{out}: {column} would hold NaN/inf for {len(bad)} item(s), e.g. item "
            f"{int(ids[bad[0]])}; not written (try --amp none)"
        )
    pad = np.flatnonzero(ids == 0)
    if len(pad) and np.any(vectors[pad[0]] != 0):
        raise EmbeddingError(f"{out}: {column} row 0 (padding) is not all zero; not written")


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
        column: the embedding column to write (replaced if present, else appended).
        dim: PCA width (default 128, or the width of ``pca``).
        batch_size: images per model call (split across the GPUs).
        num_workers: decoding processes (default ``min(8, cpu count)``; 0 = in process).
        gpu: GPU indices (default: every visible GPU; -1: CPU).
        amp: "none" | "bf16" | "fp16" autocast (default bf16 on CUDA, none on the CPU).
        cache_dir: raw feature shards (default ``<out dir>/.emb_cache/<model>-<key>/``).
        force: recompute every shard. shard_size: items per cache file. seed: PCA seed.
        pca: a PCA file written by an earlier run (``<stem>.pca.npz``): project with it
            instead of fitting a new one, so items already embedded keep their vectors bit
            for bit. Without it a new PCA is fit; a different PCA file already next to
            ``out`` is kept as ``<stem>.pca.prev.npz``.

    Returns:
        A summary dict: output paths, per-status counts, explained variance, shards computed
        and reused, images/s. Under torchrun, ranks other than 0 return
        ``{"rank": r, "role": "worker", ...}`` without writing any output.

    Raises:
        EmbeddingError: bad paths, item ids, model, options or ``pca``, or too few
            decodable images for the PCA.
    """
    log = get_logger("mmctr.embedding")
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

    item_info = Path(item_info)
    out = Path(out) if out is not None else item_info
    _check_out(out)
    status_path, pca_path = output_paths(out)

    dist_ctx = _torchrun_env()
    devices = _rank_devices(gpu, dist_ctx)
    amp_dtype = resolve_amp(amp, devices[0])
    table, ids = _read_item_info(item_info)
    refs = index_image_dir(image_dir)
    ref_list = [None if i == 0 else refs.get(int(i)) for i in ids]
    paths = [None if r is None else r.path for r in ref_list]

    spec = describe_model(model)
    given_pca = _load_pca_for(Path(pca), spec, dim) if pca is not None else None
    if dim is None:
        dim = given_pca.dim if given_pca is not None else 128
    if spec.raw_dim is not None and dim > spec.raw_dim:  # fail before hours of encoding
        raise EmbeddingError(
            f"--dim {dim} is larger than the model's feature width {spec.raw_dim}; PCA can "
            f"only reduce (use --dim {spec.raw_dim} or less)"
        )
    model_key = _cache_key(spec, amp_dtype)
    cache = (
        Path(cache_dir)
        if cache_dir is not None
        else out.parent / ".emb_cache" / f"{spec.slug}-{model_key[:12]}"
    )
    cache.mkdir(parents=True, exist_ok=True)

    n = len(ids)
    shards = []
    for k, lo in enumerate(range(0, n, shard_size)):
        hi = min(lo + shard_size, n)
        fp = refs_fingerprint(ids[lo:hi], ref_list[lo:hi])
        shards.append(_Shard(k, lo, hi, fp, cache / f"shard_{k:05d}.npz"))
    mine = [s for s in shards if s.index % dist_ctx.world_size == dist_ctx.rank]
    todo = [s for s in mine if force or not _shard_is_valid(s, model_key)]
    log.info(
        "%d items, %d shard(s) of %d; cache %s; %d shard(s) to encode%s",
        n,
        len(shards),
        shard_size,
        cache,
        len(todo),
        f" on rank {dist_ctx.rank}/{dist_ctx.world_size}" if dist_ctx.active else "",
    )

    if dist_ctx.active:
        _init_distributed(dist_ctx, devices[0])
    n_encoded, seconds = 0, 0.0
    try:
        if todo:
            n_encoded, seconds = _encode(
                todo,
                ids,
                paths,
                spec,
                model_key,
                devices,
                amp_dtype,
                batch_size,
                num_workers,
                progress and dist_ctx.rank == 0,
                log,
            )
        if dist_ctx.active:
            _barrier(devices[0])
    finally:
        if dist_ctx.created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    speed = n_encoded / seconds if seconds > 0 else 0.0
    common = {
        "rank": dist_ctx.rank,
        "world_size": dist_ctx.world_size,
        "devices": [str(d) for d in devices],
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
        "cache_dir": str(cache),
        "shards_total": len(shards),
        "shards_computed": [s.index for s in todo],
        "shards_reused": [s.index for s in mine if s not in todo],
        "images_encoded": n_encoded,
        "encode_seconds": seconds,
        "images_per_s": speed,
    }
    if dist_ctx.rank != 0:
        return {**common, "role": "worker", "out": None}

    # ---- rank 0: merge the shards, PCA, write
    parts = [_read_shard(s, model_key, ids) for s in shards]
    raw = np.concatenate([p["features"] for p in parts])
    status = np.concatenate([p["status"] for p in parts]).astype(np.int64)
    errors = np.concatenate([p["errors"].astype(object) for p in parts])
    status[ids == 0] = PADDING
    ok = status == OK

    if given_pca is None:
        pca_used = fit_pca(raw[ok], dim, seed, model=spec.name)
    elif raw.shape[1] != given_pca.raw_dim:  # the model did not say its width up front
        raise EmbeddingError(
            f"--pca {pca} projects {given_pca.raw_dim}-d features, but --model {spec.name} "
            f"gave {raw.shape[1]}-d features; use the PCA fit on this model's features"
        )
    else:
        pca_used = given_pca
    vectors = np.zeros((n, dim), dtype=np.float32)
    vectors[ok] = project(raw[ok], pca_used)
    _check_vectors(vectors, ids, out, column)

    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    values = pa.FixedSizeListArray.from_arrays(flat, dim).cast(pa.list_(pa.float32()))
    field = pa.field(column, pa.list_(pa.float32()))
    if column in table.column_names:
        new_table = table.set_column(table.column_names.index(column), field, values)
    else:
        new_table = table.append_column(field, values)

    atomic_write_parquet(new_table, out)
    _status_table(ids, status, errors, status_path)
    previous_pca = _save_pca_keeping_previous(pca_used, pca_path, log)

    counts = {name: int(np.sum(status == code)) for code, name in enumerate(STATUS_NAMES)}
    log.info("status: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    for i in np.flatnonzero(status == CORRUPT)[:5]:
        log.info("corrupt item %d: %s", int(ids[i]), errors[i])
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
        "n_items": n,
        "counts": counts,
        "explained_variance": pca_used.explained_variance,
        "contract_check": "passed",
    }
