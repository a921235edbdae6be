"""What a capture returns: per-site streamed statistics (and optional kept rows), plus provenance."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import torch

from workbench.results import table_html
from workbench.spectra import singular_values_from_gram

_MAX_ROWS = 60  # sites listed in a notebook repr; the rest are counted


def _kept(stats: SiteStats) -> str:
    """The optional parts a site holds, with their shapes (``reservoir [256, 32]``), or ``-``."""
    parts = [f"{name} {list(value.shape)}" for name in ("reservoir", "last", "mean_pooled", "full")
             if (value := getattr(stats, name)) is not None]
    return ", ".join(parts) or "-"


def _site_row(stats: SiteStats) -> list[object]:
    """One repr row from what is stored (no decomposition): token count, width, ‖mean‖, total variance."""
    variance = float(stats.comoment.diagonal().sum()) / max(stats.n - 1, 1)
    return [stats.site, stats.n, stats.d, float(stats.mean.double().norm()), variance, _kept(stats)]


def _short(value: object) -> object:
    """A meta value for the repr: a scalar as is, a tensor by its shape, anything else by a repr cut to 80 chars."""
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return f"tensor {list(value.shape)}"
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


_SITE_HEADER = ["site", "tokens", "d", "‖mean‖", "total variance", "kept"]


@dataclass(frozen=True)
class SiteStats:
    """Statistics of the token rows captured at one hook site (float64 unless noted).

    ``comoment`` is the centred ``Σ (x − μ)(x − μ)ᵀ``; :attr:`gram` gives the uncentred ``XᵀX``. Optional parts are
    ``None`` unless asked for with ``keep=``: ``reservoir`` (a uniform sample of rows, float32),
    ``last`` / ``mean_pooled`` (one vector per text, in text order), ``full`` (every kept row, in text order).

    Example: ``stats: SiteStats = cap["blocks.10.hook_resid_post"]; stats.singular_values(center=True)``"""

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
        """Unbiased covariance ``M / (n − 1)``.

        Example: ``cap["blocks.10.hook_resid_post"].covariance().shape  # [d, d]``"""
        return self.comoment / max(self.n - 1, 1)

    def singular_values(self, *, center: bool = True) -> torch.Tensor:
        """Exact singular values of the (centred) ``[n, d]`` token matrix, from the streamed statistics.

        Example: ``cap["blocks.10.hook_resid_post"].singular_values(center=True)``"""
        return singular_values_from_gram(self.comoment if center else self.gram, n=self.n)

    def __repr__(self) -> str:
        return f"SiteStats(site={self.site!r}, n={self.n}, d={self.d}, kept={_kept(self)!r})"

    def _repr_html_(self) -> str:
        """Notebook summary from the stored statistics only (singular values: call ``singular_values()``)."""
        return (f"<h4>SiteStats {html.escape(self.site)}</h4>{table_html(_SITE_HEADER, [_site_row(self)])}"
                "<p>total variance = trace of the covariance; singular values: <code>.singular_values()</code></p>")


@dataclass(frozen=True)
class CaptureResult:
    """Per-site statistics in site order, with what is needed to say where they came from.

    Example: ``cap: CaptureResult = capture(lm, texts, sites="blocks.*.hook_resid_post"); cap.singular_values()``"""

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

    def __repr__(self) -> str:
        return (f"CaptureResult(model={self.model!r}, n_texts={self.n_texts}, n_tokens={self.n_tokens}, "
                f"sites={len(self.stats)}, positions={self.positions!r})")

    def _repr_html_(self) -> str:
        """Notebook summary: the run's settings, then one row per site from the stored statistics (no SVD)."""
        run = [["model", self.model], ["texts", self.n_texts], ["tokens", self.n_tokens],
               ["positions", self.positions], ["exclude BOS", self.exclude_bos], ["has BOS", self.has_bos],
               ["batch size", self.batch_size], ["seconds", float(self.seconds)]]
        run += [[str(key), _short(value)] for key, value in self.meta.items()]
        stats = list(self.stats.values())
        rows = [_site_row(s) for s in stats[:_MAX_ROWS]]
        more = f"<p>… and {len(stats) - _MAX_ROWS} more sites</p>" if len(stats) > _MAX_ROWS else ""
        return (f"<h4>CaptureResult: {len(stats)} sites</h4>{table_html(['', 'value'], run)}"
                f"{table_html(_SITE_HEADER, rows)}{more}"
                "<p>total variance = trace of the covariance; singular values: <code>.singular_values()</code></p>")

    def singular_values(self, *, center: bool = True, sites: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Singular values per site; sites of equal width share one batched eigendecomposition.

        Example: ``cap.singular_values(center=False, sites=["blocks.10.hook_resid_post"])``"""
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
