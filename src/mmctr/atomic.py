"""Atomic file writes: a temp file next to the target, fsync, rename. A crash mid-write leaves
the old file or the complete new one, never half of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to ``path``; on success fsync and rename over ``path``.

    A crash (or an exception inside the block) never leaves a half-written ``path``: either
    the old file or the complete new one is there. A symlink is followed: its target is
    replaced and the link kept.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temp file + rename (a kill mid-write never corrupts ``path``).

    Streams into the temp file: no in-memory copy of the checkpoint (``last.pt`` of the full
    model is ~3 GB; docs/benchmarks.md has the peak measured).
    """
    import torch

    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def atomic_write_parquet(table: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """pyarrow Table -> parquet through a temp file + rename."""
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, **kwargs)
