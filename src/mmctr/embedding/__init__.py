"""Stage 1: CLIP image features for every item, reduced with PCA, written into item_info.

Entry point: :func:`generate_embeddings` (``generate_embeddings.py`` is its command line).
New items are projected exactly like the old ones with :func:`load_pca` and :func:`project`.
"""

from mmctr.embedding.encoder import (
    DEFAULT_MODEL,
    ImageFeatureExtractor,
    build_random_clip,
    describe_model,
    load_image_model,
    make_parallel,
)
from mmctr.embedding.images import STATUS_NAMES, EmbeddingError
from mmctr.embedding.pca import PCAProjection, fit_pca, load_pca, project, save_pca
from mmctr.embedding.pipeline import DEFAULT_COLUMN, generate_embeddings, output_paths

__all__ = [
    "DEFAULT_COLUMN",
    "DEFAULT_MODEL",
    "STATUS_NAMES",
    "EmbeddingError",
    "ImageFeatureExtractor",
    "PCAProjection",
    "build_random_clip",
    "describe_model",
    "fit_pca",
    "generate_embeddings",
    "load_image_model",
    "load_pca",
    "make_parallel",
    "output_paths",
    "project",
    "save_pca",
]
