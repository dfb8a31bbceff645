"""Small shared helpers: atomic file writes, seeding, devices, logging."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

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
    model is ~3 GB; ``python scripts/bench_checkpoint.py`` measures the peak).
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


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (seeds third-party code using the global RNG)
    torch.manual_seed(seed)


class DeviceError(RuntimeError):
    """The device asked for (``--gpu N``) is not on this machine."""


def resolve_device(gpu: int | str | None) -> Any:
    """``--gpu N`` -> torch.device. -1 / None is CPU; a missing GPU is a :class:`DeviceError`,
    never a fall-back. GPU N also becomes the current CUDA device, so that nothing (pinned
    memory, streams, CUDA graphs) lands on GPU 0 by default, as with several runs side by side
    on one machine (the tuner)."""
    import torch

    if gpu is None or int(gpu) < 0:
        return torch.device("cpu")
    gpu = int(gpu)
    check_gpu_exists(gpu)
    torch.cuda.set_device(gpu)
    return torch.device(f"cuda:{gpu}")


def check_gpu_exists(gpu: int) -> None:
    """A :class:`DeviceError` unless CUDA device ``gpu`` (>= 0) exists. Opens no CUDA context
    (a launcher such as the tuner checks its GPUs without holding memory on them)."""
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(
            f"--gpu {gpu} was asked for but CUDA is not available on this machine "
            "(use --gpu -1 for the CPU)"
        )
    if gpu >= torch.cuda.device_count():
        raise DeviceError(
            f"--gpu {gpu} was asked for but only {torch.cuda.device_count()} CUDA device(s) exist"
        )


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_malloc_tuned: str | None = None


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default every block of 32 MB or more (the Transformer-DCN step's activations: 1024 rows
    x 9,088 floats = 37 MB) is a fresh mmap, and the kernel zero-fills its pages again on
    every step; freed heap tops are trimmed likewise. Here all blocks come from the heap and
    nothing is trimmed (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``), so
    after the first step the allocator reuses its memory: CPU training steps 1.85x (seed) and
    1.53x (rank-1) faster for +7% / +4% peak RSS (``scripts/bench_malloc.py``). Idempotent; a no-op
    off glibc, when the user set any ``MALLOC_*`` variable, or with ``MMCTR_MALLOC=default``.
    Returns what was done, for the log.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    if os.environ.get("MMCTR_MALLOC", "").lower() == "default":
        _malloc_tuned = "glibc malloc defaults (MMCTR_MALLOC=default)"
    elif any(k.startswith("MALLOC_") for k in os.environ):
        _malloc_tuned = "malloc as the MALLOC_* environment sets it"
    else:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
        except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
            ok = False
        _malloc_tuned = (
            "malloc keeps freed memory (no mmap, no trim; MMCTR_MALLOC=default to undo)"
            if ok
            else "malloc defaults (no glibc mallopt here)"
        )
    return _malloc_tuned


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def get_logger(name: str = "mmctr", log_file: str | os.PathLike | None = None) -> logging.Logger:
    """A logger that prints to stderr and, when ``log_file`` is given, APPENDS to it."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger
