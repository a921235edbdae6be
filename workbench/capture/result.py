"""What a capture returns: per-site streamed statistics (and optional kept rows), plus provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workbench.spectra import singular_values_from_gram


@dataclass(frozen=True)
class SiteStats:
    """Statistics of the token rows captured at one hook site (float64 unless noted).

    ``comoment`` is the centred ``Σ (x − μ)(x − μ)ᵀ``; :attr:`gram` gives the uncentred ``XᵀX``. Optional parts are
    ``None`` unless asked for with ``keep=``: ``reservoir`` (a uniform sample of rows, float32),
    ``last`` / ``mean_pooled`` (one vector per text, in text order), ``full`` (every kept row, in text order).
    """

    site: str
    n: int
    mean: torch.Tensor
    comoment: torch.Tensor
    reservoir: torch.Tensor | None = None
    last: torch.Tensor | None = None
    mean_pooled: torch.Tensor | None = None
    full: torch.Tensor | None = None

    @property
    def d(self) -> int:
        return self.mean.shape[0]

    @property
    def gram(self) -> torch.Tensor:
        return self.comoment + self.n * torch.outer(self.mean, self.mean)

    def covariance(self) -> torch.Tensor:
        """Unbiased covariance ``M / (n − 1)``."""
        return self.comoment / max(self.n - 1, 1)

    def singular_values(self, *, center: bool = True) -> torch.Tensor:
        """Exact singular values of the (centred) ``[n, d]`` token matrix, from the streamed statistics."""
        return singular_values_from_gram(self.comoment if center else self.gram, n=self.n)


@dataclass(frozen=True)
class CaptureResult:
    """Per-site statistics in site order, with what is needed to say where they came from."""

    stats: dict[str, SiteStats]
    model: str
    n_texts: int
    n_tokens: int
    positions: str | int
    exclude_bos: bool
    has_bos: bool
    batch_size: int
    seconds: float
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return list(self.stats)

    def __getitem__(self, site: str) -> SiteStats:
        return self.stats[site]

    def singular_values(self, *, center: bool = True, sites: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Singular values per site; sites of equal width share one batched eigendecomposition."""
        chosen = sites or self.sites
        by_width: dict[int, list[str]] = {}
        for site in chosen:
            by_width.setdefault(self.stats[site].d, []).append(site)
        out: dict[str, torch.Tensor] = {}
        for group in by_width.values():
            grams = torch.stack([self.stats[s].comoment if center else self.stats[s].gram for s in group])
            for site, values in zip(group, singular_values_from_gram(grams), strict=True):
                out[site] = values[: min(self.stats[site].n, values.shape[0])]
        return {site: out[site] for site in chosen}
