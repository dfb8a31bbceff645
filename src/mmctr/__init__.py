"""mmctr: config-driven multimodal CTR prediction (FuxiCTR-compatible configs, MicroLens data)."""

__version__ = "0.1.0"


def _flush_denormals() -> None:
    """Treat denormal floats as zero on the CPU, process-wide.

    Adam moments of rarely-updated embedding rows and small gradients decay into denormal
    floats, which x86 CPUs process up to ~100x slower; demo training slowed down several
    times over an epoch without this. It must run before torch creates its intra-op thread
    pool, because worker threads inherit the setting from the thread that creates them.
    Set MMCTR_KEEP_DENORMALS=1 to opt out.
    """
    import os

    if os.environ.get("MMCTR_KEEP_DENORMALS"):
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.set_flush_denormal(True)


_flush_denormals()
