"""RankMe of embedding matrices: any encoder's ``[N, d]`` outputs, in memory or in a file.

RankMe (Garrido, Balestriero, Najman & LeCun, ICML 2023, eq. 1) is :func:`workbench.spectra.rankme` of the singular
values of the embedding matrix, one row per sample, not centred in the paper (``center`` exposes it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workbench.errors import config_error
from workbench.matrix_files import read_matrices
from workbench.spectra.metrics import rankme
from workbench.spectra.svd import batched_singular_values

__all__ = ["embedding_spectra", "rankme_of", "rankme_of_file"]


def embedding_spectra(matrices: Sequence[torch.Tensor], *, center: bool = False,
                      call: str = "embedding_spectra") -> list[torch.Tensor]:
    """Singular values of each ``[N, d]`` embedding matrix (one batched SVD per shape); N ≥ 2, else ConfigError.

    Example: ``s = embedding_spectra([torch.randn(100, 64), torch.randn(50, 32)], center=True)``"""
    for i, m in enumerate(matrices):
        if not isinstance(m, torch.Tensor) or m.ndim != 2 or m.shape[0] < 2:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise config_error(call, f"matrices[{i}]", "a 2-D [n_samples >= 2, dim] tensor", shape)
    return batched_singular_values(list(matrices), center=center)


def rankme_of(matrices: Sequence[torch.Tensor], *, eps: float = 1e-7, center: bool = False) -> list[float]:
    """RankMe of each ``[N, d]`` matrix (one batched SVD per shape). Needs N ≥ 2 (else ConfigError); NaN/inf raise a
    ShapeError.

    Example: ``rankme_of([cap["blocks.10.hook_resid_post"].mean_pooled])``"""
    return [float(rankme(s, eps=eps)) for s in embedding_spectra(matrices, center=center, call="rankme_of")]


def rankme_of_file(path: str, *, eps: float = 1e-7, center: bool = False) -> dict[str, float]:
    """RankMe of every matrix in an embedding file (``.npy``/``.pt``/``.safetensors``; see
    :func:`workbench.matrix_files.read_matrices`), by name: serves any encoder, not only language models.

    Example: ``rankme_of_file("embeddings.npy")  # {"embeddings": ...}``"""
    mats = read_matrices(path)
    return dict(zip(mats, rankme_of(list(mats.values()), eps=eps, center=center), strict=True))
