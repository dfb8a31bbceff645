"""Devices: ``--gpu N`` to a torch.device, the GPU check launchers run, CPU bf16 support."""

from __future__ import annotations

from typing import Any


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


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
