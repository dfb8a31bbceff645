"""Item images: find them on disk, decode them strictly, batch them for the encoder.

Every item gets a status:

- ``ok``: decoded and preprocessed with the model's own image processor,
- ``missing``: no file for this item id in the image folder,
- ``corrupt``: a file exists but cannot be decoded (not an image, truncated, unreadable),
- ``padding``: item id 0, the padding row; never encoded, whatever the folder holds.

Only ``ok`` items reach the model; every other item later gets an all-zero vector (a missing
image is never replaced by a black image).

Decoding runs in DataLoader workers (PIL, plus the processor's resize / crop / normalise);
:func:`collate_items` returns an :class:`ImageBatch` whose ``pixel_values`` hold the ``ok``
rows only.
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
    pixel_values: (B_ok, 3, H, W) float32, the rows whose status is ``OK``, in batch order;
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


def refs_fingerprint(item_ids: Sequence[int], refs: Sequence[ImageRef | None]) -> str:
    """A digest of which files back which items (name, size, mtime): keys one cache shard."""
    h = hashlib.sha1()
    h.update(np.asarray(item_ids, dtype=np.int64).tobytes())
    for ref in refs:
        if ref is None:
            h.update(b"\0-")
        else:
            h.update(f"\0{os.path.basename(ref.path)}|{ref.size}|{ref.mtime_ns}".encode())
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


class ItemImageDataset(torch.utils.data.Dataset):
    """Items -> (item_id, pixel tensor (3, H, W) or None, status code, error text).

    ``paths[i]`` is the image of ``item_ids[i]`` (None = missing). ``processor`` is the
    model's image processor (a transformers ``ImageProcessor``), called on one RGB image.
    Item id 0 is the padding row and is never read.
    """

    def __init__(
        self, item_ids: Sequence[int], paths: Sequence[str | None], processor: Any
    ) -> None:
        if len(item_ids) != len(paths):
            raise ValueError("item_ids and paths differ in length")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.paths = list(paths)
        self.processor = processor

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
            pixels = self.processor(images=img, return_tensors="np")["pixel_values"][0]
            tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
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
