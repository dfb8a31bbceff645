"""mmctr: config-driven multimodal CTR prediction (FuxiCTR-compatible configs, MicroLens data).

Importing the package sets nothing process-wide: the entry points (the CLI, ``train()``,
prediction, embedding) call :func:`mmctr.runtime.flush_denormals` first.
"""

__version__ = "0.1.0"
