"""The former home of the small shared helpers, kept so that old imports work. New code
imports from where each now lives: :mod:`mmctr.atomic` (atomic file writes),
:mod:`mmctr.device` (devices, bf16 support), :mod:`mmctr.runtime` (seeding, denormals, malloc
tuning), :mod:`mmctr.log` (the logger)."""

from mmctr.atomic import (
    WRITE_FAILURES,
    OutputError,
    atomic_open,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
)
from mmctr.device import DeviceError, check_gpu_exists, cpu_supports_bf16, resolve_device
from mmctr.log import get_logger
from mmctr.runtime import flush_denormals, keep_freed_memory, seed_everything

__all__ = [
    "WRITE_FAILURES",
    "DeviceError",
    "OutputError",
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_parquet",
    "atomic_write_text",
    "check_gpu_exists",
    "cpu_supports_bf16",
    "flush_denormals",
    "get_logger",
    "keep_freed_memory",
    "resolve_device",
    "seed_everything",
]
