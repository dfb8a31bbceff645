"""The run logger: stderr plus, optionally, an appended log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


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
