"""PCA from raw image features (e.g. 512-d) to the stored width (128-d), saved so that new
items can be projected exactly like the old ones.

The fit is scikit-learn's ``PCA`` with the full SVD (deterministic; ``random_state`` is
recorded anyway). The written vectors are always ``project(raw, pca)``, the same function
that later projects new items, so the saved file reproduces them bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmctr.atomic import atomic_open
from mmctr.embedding.images import EmbeddingError


@dataclass
class PCAProjection:
    """components: (dim, raw_dim) float32; mean: (raw_dim,) float32;
    explained_variance_ratio: (dim,) float64. ``model`` names the model the features came
    from; ``model_digest`` fingerprints its content (``encoder.model_digest``; empty in files
    written before it was recorded)."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance_ratio: np.ndarray
    model: str = ""
    seed: int = 0
    n_fit: int = 0
    model_digest: str = ""

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def raw_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained_variance(self) -> float:
        """Share of the raw features' variance that the kept components explain."""
        return float(np.sum(self.explained_variance_ratio))


def fit_pca(
    raw: np.ndarray, dim: int, seed: int, model: str = "", model_digest: str = ""
) -> PCAProjection:
    """Fit PCA(n_components=dim) on ``raw`` (N, raw_dim): the rows of the ``ok`` items."""
    from sklearn.decomposition import PCA

    n, raw_dim = raw.shape
    if dim > raw_dim:
        raise EmbeddingError(
            f"--dim {dim} is larger than the model's feature width {raw_dim}; PCA can only "
            f"reduce (use --dim {raw_dim} or less)"
        )
    if n < dim:
        raise EmbeddingError(
            f"PCA to --dim {dim} needs at least {dim} decodable images, but only {n} items "
            "have status ok; add images or lower --dim"
        )
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed)
    pca.fit(np.asarray(raw, dtype=np.float64))
    return PCAProjection(
        components=pca.components_.astype(np.float32),
        mean=pca.mean_.astype(np.float32),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        model=model,
        seed=int(seed),
        n_fit=int(n),
        model_digest=model_digest,
    )


def project(raw: np.ndarray, pca: PCAProjection) -> np.ndarray:
    """(N, raw_dim) raw features -> (N, dim) float32: ``(raw - mean) @ components.T``.

    Each row's vector depends on that row alone, bit for bit: einsum's own loops sum every
    row in the same order, where a BLAS product blocks the matrix by its size, so adding one
    item could move another item's vector in the last bit (``--pca`` promises none moves).
    91,718 items take ~3.5 s on two cores (the BLAS product ~1 s).
    """
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 2 or raw.shape[1] != pca.raw_dim:
        raise EmbeddingError(
            f"features of shape {raw.shape} do not fit this PCA (raw width {pca.raw_dim})"
        )
    centred = raw.astype(np.float64) - pca.mean.astype(np.float64)
    components = pca.components.astype(np.float64)
    return np.einsum("ij,kj->ik", centred, components, optimize=False).astype(np.float32)


def save_pca(pca: PCAProjection, path: str | os.PathLike) -> None:
    """Write ``pca`` as .npz (atomically): components, mean, explained_variance_ratio,
    model, model_digest, raw_dim, dim, seed, n_fit."""
    with atomic_open(path, "wb") as fh:
        np.savez(
            fh,
            components=pca.components,
            mean=pca.mean,
            explained_variance_ratio=pca.explained_variance_ratio,
            model=np.array(pca.model),
            model_digest=np.array(pca.model_digest),
            raw_dim=np.array(pca.raw_dim),
            dim=np.array(pca.dim),
            seed=np.array(pca.seed),
            n_fit=np.array(pca.n_fit),
        )


def load_pca(path: str | os.PathLike) -> PCAProjection:
    """Read a file written by :func:`save_pca`."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"PCA file {path} does not exist")
    with np.load(path, allow_pickle=False) as z:
        return PCAProjection(
            components=z["components"],
            mean=z["mean"],
            explained_variance_ratio=z["explained_variance_ratio"],
            model=str(z["model"]),
            seed=int(z["seed"]),
            n_fit=int(z["n_fit"]),
            model_digest=str(z["model_digest"]) if "model_digest" in z.files else "",
        )
