"""mmctr: config-driven multimodal CTR prediction."""

__version__ = "0.1.0"
