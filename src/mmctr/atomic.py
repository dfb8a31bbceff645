"""Atomic file writes: a temp file next to the target, fsync, rename. A crash mid-write leaves
the old file or the complete new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# errno values that mean "this place cannot take the file", not a bug: a full disk or quota,
# a size limit, a read-only or forbidden folder, a file where a folder should be.
WRITE_FAILURES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)


class OutputError(OSError):
    """An output file could not be written (full disk, read-only folder...): the message names
    the file; the previous version of it, if any, is untouched."""


def _output_error(path: Path, exc: OSError) -> OutputError:
    why = exc.strerror or str(exc)
    return OutputError(
        exc.errno,
        f"could not write {path}: {why} (errno {exc.errno}); any previous {path.name} is "
        "left as it was",
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file next to ``path``; on success fsync and rename over ``path``.

    A crash (or an exception inside the block) never leaves a half-written ``path``: either
    the old file or the complete new one is there. A symlink is followed: its target is
    replaced and the link kept. A full disk or a read-only folder is an :class:`OutputError`
    naming ``path``.
    """
    path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in WRITE_FAILURES:
            raise _output_error(path, exc) from None
        raise
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
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_FAILURES:
            raise _output_error(path, exc) from None
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
        sink = _WriteErrors(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:  # torch's zip writer reports a failed write() as its own error
            if sink.error is not None:
                raise sink.error from None
            raise


class _WriteErrors:
    """A file wrapper that keeps the first OSError of ``write`` (torch.save hides it)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_write_parquet(table: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """pyarrow Table -> parquet through a temp file + rename."""
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, **kwargs)
