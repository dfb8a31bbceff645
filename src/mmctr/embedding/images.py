"""Item images: find them on disk, decode them strictly, batch them for the encoder.

Every item gets a status:

- ``ok``: decoded and preprocessed with the model's own image processor,
- ``missing``: no file for this item id in the image folder,
- ``corrupt``: a file exists but cannot be decoded (not an image, truncated, unreadable),
- ``padding``: item id 0, the padding row; never encoded, whatever the folder holds.

Only ``ok`` items reach the model; every other item later gets an all-zero vector (a missing
image is never replaced by a black image).

Decoding runs in DataLoader workers (PIL, plus the processor's resize and crop);
:func:`collate_items` returns an :class:`ImageBatch` whose ``pixel_values`` hold the ``ok``
rows only. When :func:`split_processor` finds that the processor's last two steps are a plain
rescale and normalise (CLIP's are), the workers stop before them and ship uint8 pixels, a
quarter of the float32 bytes through shared memory, pinned memory and the host-to-device copy;
:class:`PixelNorm` then rescales and normalises on the device, reproducing the processor's own
output (checked on a probe image before it is used).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile


class EmbeddingError(ValueError):
    """A problem with the embedding stage's inputs that the user can fix (bad path, model,
    option); the command line prints it as one paragraph."""


OK, MISSING, CORRUPT, PADDING = 0, 1, 2, 3
STATUS_NAMES = ("ok", "missing", "corrupt", "padding")

# When a folder holds several files for one item id, the first extension here wins.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class ImageRef(NamedTuple):
    """One image file on disk; size and mtime key the feature cache (an edited file is
    re-encoded)."""

    path: str
    size: int
    mtime_ns: int


class ImageBatch(NamedTuple):
    """What :func:`collate_items` returns.

    item_ids: (B,) int64; status: (B,) int8 status codes;
    pixel_values: (B_ok, 3, H, W), the rows whose status is ``OK``, in batch order: float32
    model input, or uint8 resized-and-cropped pixels that :class:`PixelNorm` finishes;
    errors: B strings (empty for ``ok``).
    """

    item_ids: torch.Tensor
    pixel_values: torch.Tensor
    status: torch.Tensor
    errors: list[str]


def index_image_dir(image_dir: str | os.PathLike) -> dict[int, ImageRef]:
    """Map item id -> image file for every ``<item_id>.<ext>`` in ``image_dir`` (one scan,
    no per-item ``stat`` of files that do not exist)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise EmbeddingError(f"--image-dir {image_dir}: no such folder")
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[int, tuple[int, os.DirEntry]] = {}
    with os.scandir(image_dir) as it:
        for entry in it:
            stem, ext = os.path.splitext(entry.name)
            ext = ext.lower()
            if ext not in rank or not stem.isdigit():
                continue
            item_id = int(stem)
            if item_id in found and found[item_id][0] <= rank[ext]:
                continue
            found[item_id] = (rank[ext], entry)
    refs = {}
    for item_id, (_, entry) in found.items():
        try:
            st = entry.stat()
        except OSError:
            continue
        refs[item_id] = ImageRef(entry.path, int(st.st_size), int(st.st_mtime_ns))
    return refs


NO_FILE = "-"  # the item fingerprint of an item without an image file


def item_fingerprint(ref: ImageRef | None) -> str:
    """Which file backs one item: ``name|size|mtime_ns``, or ``-`` for none. An item whose
    fingerprint is unchanged keeps its cached features."""
    if ref is None:
        return NO_FILE
    return f"{os.path.basename(ref.path)}|{ref.size}|{ref.mtime_ns}"


def shard_fingerprint(item_ids: Sequence[int], item_fps: Sequence[str]) -> str:
    """A digest of the items of one cache shard and their :func:`item_fingerprint` s."""
    h = hashlib.sha1()
    h.update(np.asarray(item_ids, dtype=np.int64).tobytes())
    for fp in item_fps:
        h.update(f"\0{fp}".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    # With LOAD_TRUNCATED_IMAGES a cut-off JPEG decodes "fine" with a grey bottom; we want an
    # error (status corrupt), whatever another library set globally.
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path`` as RGB. Raises on anything that is not a whole image."""
    with _strict_truncation(), Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


# the processor's own output and PixelNorm's may differ by float32 rounding, nothing more
PIXEL_NORM_ATOL = 1e-5


class PixelNorm(torch.nn.Module):
    """An image processor's rescale and normalise steps, run where the pixels are:
    uint8 (B, 3, H, W) -> float32 ``(x * rescale_factor - mean) / std``.

    A module, so ``.to(device)`` and DataParallel's replicas carry the mean and std.
    """

    def __init__(
        self,
        rescale_factor: float | None,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        super().__init__()
        self.rescale_factor = None if rescale_factor is None else float(rescale_factor)
        self.normalize = mean is not None
        shape = (1, -1, 1, 1)
        m = torch.tensor(mean if mean is not None else [0.0], dtype=torch.float32).view(shape)
        s = torch.tensor(std if std is not None else [1.0], dtype=torch.float32).view(shape)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float()
        if self.rescale_factor is not None:
            x = x * self.rescale_factor
        if self.normalize:
            x = (x - self.mean) / self.std
        return x


def _probe_image() -> Image.Image:
    """A fixed, busy, non-square RGB picture (noise and gradients) to compare pipelines on."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:83, 0:131]
    base = np.stack([xx * 255 / 130, yy * 255 / 82, (xx + yy) % 256], axis=-1)
    noisy = base + rng.normal(0, 40, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def split_processor(processor: Any) -> tuple[PixelNorm | None, str]:
    """(PixelNorm, why) when ``processor`` can stop before its rescale / normalise steps and
    :class:`PixelNorm` finishes them with the same result; (None, why) otherwise, and the
    workers run the whole processor.

    The check is empirical, on :func:`_probe_image`: the processor called with
    ``do_rescale=False, do_normalize=False`` must return uint8 pixels, and PixelNorm of them
    must match the processor's full output to ``PIXEL_NORM_ATOL``.
    """
    attrs = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
    if not all(hasattr(processor, a) for a in attrs):
        return None, f"{type(processor).__name__} has no rescale/normalise settings"
    norm = PixelNorm(
        processor.rescale_factor if processor.do_rescale else None,
        processor.image_mean if processor.do_normalize else None,
        processor.image_std if processor.do_normalize else None,
    )
    img = _probe_image()
    try:
        full = np.asarray(processor(images=img, return_tensors="np")["pixel_values"])
        raw = np.asarray(
            processor(images=img, return_tensors="np", do_rescale=False, do_normalize=False)[
                "pixel_values"
            ]
        )
    except Exception as exc:  # a processor that refuses the keywords: use it whole
        return None, f"{type(processor).__name__} refused do_rescale/do_normalize ({exc})"
    if raw.dtype != np.uint8 or raw.shape != full.shape:
        return None, f"{type(processor).__name__} gives {raw.dtype} {raw.shape} before rescaling"
    ours = norm(torch.from_numpy(raw)).numpy()
    err = float(np.abs(ours - full).max())
    if not err <= PIXEL_NORM_ATOL:
        return None, f"normalising on the device differs from the processor by {err:.2e}"
    return (
        norm,
        f"uint8 pixels from the workers, rescale/normalise on the device (max diff {err:.1e})",
    )


class ItemImageDataset(torch.utils.data.Dataset):
    """Items -> (item_id, pixel tensor (3, H, W) or None, status code, error text).

    ``paths[i]`` is the image of ``item_ids[i]`` (None = missing). ``processor`` is the
    model's image processor (a transformers ``ImageProcessor``), called on one RGB image:
    whole (float32 model input), or with ``uint8=True`` without its rescale / normalise
    steps (uint8 pixels for :class:`PixelNorm`; see :func:`split_processor`).
    Item id 0 is the padding row and is never read.
    """

    def __init__(
        self,
        item_ids: Sequence[int],
        paths: Sequence[str | None],
        processor: Any,
        uint8: bool = False,
    ) -> None:
        if len(item_ids) != len(paths):
            raise ValueError("item_ids and paths differ in length")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.paths = list(paths)
        self.processor = processor
        self.uint8 = uint8
        self._kwargs = {"do_rescale": False, "do_normalize": False} if uint8 else {}

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int, str]:
        item_id = int(self.item_ids[i])
        path = self.paths[i]
        if item_id == 0:
            return item_id, None, PADDING, ""
        if path is None:
            return item_id, None, MISSING, ""
        try:
            img = decode_image(path)
            pixels = self.processor(images=img, return_tensors="np", **self._kwargs)
            dtype = np.uint8 if self.uint8 else np.float32
            tensor = torch.from_numpy(np.ascontiguousarray(pixels["pixel_values"][0], dtype=dtype))
        except FileNotFoundError as exc:  # deleted between the folder scan and now
            return item_id, None, MISSING, _one_line(exc)
        except Exception as exc:  # any decoder failure means a corrupt file
            return item_id, None, CORRUPT, _one_line(exc)
        return item_id, tensor, OK, ""


def collate_items(samples: Sequence[tuple[int, torch.Tensor | None, int, str]]) -> ImageBatch:
    """Stack the ``ok`` images of a list of dataset samples (runs in the worker)."""
    item_ids = torch.tensor([s[0] for s in samples], dtype=torch.int64)
    status = torch.tensor([s[2] for s in samples], dtype=torch.int8)
    pixels = [s[1] for s in samples if s[2] == OK]
    pixel_values = torch.stack(pixels) if pixels else torch.empty(0, dtype=torch.float32)
    return ImageBatch(item_ids, pixel_values, status, [s[3] for s in samples])


def _worker_init(_: int) -> None:
    # Each worker decodes one image at a time; intra-op threads would only fight the others.
    torch.set_num_threads(1)


def make_loader(
    dataset: ItemImageDataset, batch_size: int, num_workers: int, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """An in-order DataLoader over ``dataset`` that decodes in ``num_workers`` processes."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        # timeout: a worker stuck on a pathological file fails the run (finished shards stay
        # cached) instead of hanging it; no sane batch takes ten minutes to decode.
        kwargs.update(prefetch_factor=4, worker_init_fn=_worker_init, timeout=600)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=pin_memory,
        **kwargs,
    )
