"""Effective rank and RankMe of token representations per layer (residual stream, attention out, MLP out).

Effective rank: Roy & Vetterli (2007), eq. (1)-(2), on the singular values of the ``[n_tokens, d]`` token matrix,
mean-centred over tokens as VERL does (hf618/VERL ``metrics_utils.py``); the uncentred value is reported alongside.
RankMe: Garrido et al. (2023), eq. (1), p_k = σ_k/‖σ‖₁ + ε with ε = 1e-7. All values come from the streamed
centred co-moment (exact, float64) — no token matrix is ever held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.capture.hooks import REPRESENTATION_KINDS, SITE_KINDS, resolve_sites, site, split_site
from workbench.results import Config, Result
from workbench.spectra import effective_rank, rankme, stable_rank
from workbench.validation import Choice, Int, ListOf, Number, Optional, Str

# TransformerLens hook names of the representations the report covers, by short name.
KINDS = {kind: SITE_KINDS[kind] for kind in REPRESENTATION_KINDS}


@dataclass(frozen=True)
class ActivationSpectraConfig(Config):
    """``kinds``: short names from :data:`KINDS` captured at every layer; ``sites`` replaces them with explicit
    hook names or globs. ``rankme_eps``: RankMe's ε. ``n_values``: singular values kept per site for the plots.

    Example: ``run_analysis(lm, "activation_spectra", ActivationSpectraConfig(kinds=["resid_post"], n_values=32))``"""

    kind = "activation_spectra_config"
    kinds: list[str] = field(default_factory=lambda: ["resid_post", "attn_out", "mlp_out"])
    sites: list[str] | None = None
    rankme_eps: float = 1e-7
    n_values: int = 64

    constraints = {"kinds": ListOf(Choice(KINDS), nonempty=True),
                   "sites": Optional(ListOf(Str(), nonempty=True,
                                            allowed_text="a non-empty list of hook names / globs")),
                   "rankme_eps": Number(low=0), "n_values": Int(low=1)}


@dataclass(frozen=True)
class ActivationSpectraResult(Result):
    """Column-wise: one entry per captured site, in layer order.

    Example: ``result = run_analysis(lm, "activation_spectra", texts=texts); result.plot_spectra().show()``"""

    kind = "activation_spectra"
    title = "Token-representation spectra per layer"
    model: str
    n_texts: int
    n_tokens: int
    site: list[str]
    layer: list[int | None]
    component: list[str]
    n_rows: list[int]
    erank_centred: list[float]
    erank_uncentred: list[float]
    rankme_centred: list[float]
    rankme_uncentred: list[float]
    stable_rank_centred: list[float]
    singular_values: list[list[float]]  # leading centred singular values, descending

    def components(self) -> list[str]:
        """The captured components (site kinds), in the order of their first site.

        Example: ``result.components()  # ["resid_post", "attn_out", "mlp_out"] with the default kinds``"""
        return list(dict.fromkeys(self.component))

    def series(self, component: str, column: str) -> tuple[list[int | None], list[float]]:
        """``(layers, values)`` of one column (e.g. ``"erank_centred"``) over the sites of one component, in layer
        order.

        Example: ``layers, eranks = result.series("resid_post", "erank_centred")``"""
        idx = [i for i, c in enumerate(self.component) if c == component]
        return [self.layer[i] for i in idx], [getattr(self, column)[i] for i in idx]

    def plot(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Effective rank (Roy & Vetterli)", "RankMe (ε=1e-7)"))
        palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
        for i, comp in enumerate(self.components()):
            color = palette[i % len(palette)]
            for col, metric in ((1, "erank"), (2, "rankme")):
                for centred, dash in ((True, "solid"), (False, "dot")):
                    x, y = self.series(comp, f"{metric}_{'centred' if centred else 'uncentred'}")
                    fig.add_trace(go.Scatter(
                        x=x, y=y, mode="lines+markers", line={"color": color, "dash": dash},
                        name=f"{comp} ({'centred' if centred else 'uncentred'})", legendgroup=f"{comp}{centred}",
                        showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="rank", col=1)
        fig.update_layout(title=f"{self.model}: {self.n_tokens} tokens from {self.n_texts} texts "
                                "(solid: centred, dotted: uncentred)", height=450)
        return fig

    def plot_spectra(self) -> go.Figure:
        """Normalised leading singular values log10(σ_i/σ_1) per layer of the first component.

        Log scale: a few massive directions make σ_1 tens of times σ_2 in some layers, which a linear scale hides.

        Example: ``result.plot_spectra().show()``"""
        comp = self.components()[0]
        idx = [i for i, c in enumerate(self.component) if c == comp]
        z = [[math.log10(v / sv[0]) if sv[0] > 0 and v > 0 else None for v in sv]
             for sv in (self.singular_values[i] for i in idx)]
        fig = go.Figure(go.Heatmap(z=z, y=[self.layer[i] for i in idx], colorscale="Viridis", zmax=0,
                                   colorbar={"title": "log10 σ_i/σ_1"}))
        fig.update_layout(title=f"{comp}: leading centred singular values per layer", xaxis_title="index i",
                          yaxis_title="layer", height=450)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_spectra()]

    def table(self):
        header = ["site", "tokens", "erank (centred)", "erank (uncentred)", "RankMe (centred)", "RankMe (uncentred)",
                  "stable rank (centred)"]
        rows = [[self.site[i], self.n_rows[i], self.erank_centred[i], self.erank_uncentred[i], self.rankme_centred[i],
                 self.rankme_uncentred[i], self.stable_rank_centred[i]] for i in range(len(self.site))]
        return header, rows

    def summary(self) -> str:
        parts = []
        for comp in self.components():
            layers, values = self.series(comp, "erank_centred")
            peak = max(range(len(values)), key=values.__getitem__)
            parts.append(f"{comp}: centred effective rank {values[0]:.1f} at layer {layers[0]}, peak {values[peak]:.1f}"
                         f" at layer {layers[peak]}, {values[-1]:.1f} at layer {layers[-1]}")
        _, cen = self.series(self.components()[0], "erank_centred")
        _, unc = self.series(self.components()[0], "erank_uncentred")
        gap = max(abs(a - b) / max(a, 1e-12) for a, b in zip(cen, unc, strict=True))
        parts.append(f"centring changes the {self.components()[0]} effective rank by up to {100 * gap:.0f}% "
                     "(a large mean direction inflates the uncentred top singular value)")
        if self.n_tokens < 2000:
            parts.append(f"only {self.n_tokens} tokens were captured: ranks near the token count are limited by it")
        return "; ".join(parts) + "."


def sites_for(config: ActivationSpectraConfig, facts) -> list[str]:
    """The hook sites the analysis captures: the config's explicit ``sites`` (hook names or globs), else every
    configured kind at every layer.

    Example: ``sites_for(ActivationSpectraConfig(kinds=["resid_post"]), lm.facts)  # one resid_post site per layer``"""
    if config.sites is not None:
        return list(config.sites)
    return [site(k, layer) for k in config.kinds for layer in range(facts.n_layers)]


def compute(inputs: Inputs, config: ActivationSpectraConfig) -> ActivationSpectraResult:
    """Spectra of the shared capture: centred and uncentred singular values per site, their effective rank, RankMe and
    stable rank, and the leading singular values for the plots.

    Example: ``compute(inputs, ActivationSpectraConfig())  # what run_analysis(lm, "activation_spectra") calls``"""
    cap = inputs.capture
    wanted = sites_for(config, inputs.facts)
    sites = wanted if config.sites is None else resolve_sites(cap.sites, wanted)  # kinds keep the config's order
    centred = cap.singular_values(center=True, sites=sites)
    uncentred = cap.singular_values(center=False, sites=sites)
    cols: dict[str, list] = {k: [] for k in ("layer", "component", "n_rows", "erank_centred", "erank_uncentred",
                                             "rankme_centred", "rankme_uncentred", "stable_rank_centred",
                                             "singular_values")}
    for name in sites:
        layer, comp = split_site(name)
        c, u = centred[name], uncentred[name]
        cols["layer"].append(layer)
        cols["component"].append(_short(comp))
        cols["n_rows"].append(cap[name].n)
        cols["erank_centred"].append(float(effective_rank(c)))
        cols["erank_uncentred"].append(float(effective_rank(u)))
        cols["rankme_centred"].append(float(rankme(c, eps=config.rankme_eps)))
        cols["rankme_uncentred"].append(float(rankme(u, eps=config.rankme_eps)))
        cols["stable_rank_centred"].append(float(stable_rank(c)))
        cols["singular_values"].append([float(v) for v in c[: config.n_values]])
    return ActivationSpectraResult(model=inputs.model_name, n_texts=cap.n_texts, n_tokens=cap.n_tokens, site=sites,
                                   **cols)


def _short(component: str) -> str:
    for short, pattern in KINDS.items():
        if pattern.endswith(component):
            return short
    return component


ANALYSIS = Analysis(
    name="activation_spectra",
    description="Effective rank and RankMe of token representations per layer (centred and uncentred)",
    config=ActivationSpectraConfig, result=ActivationSpectraResult, compute=compute, sites=sites_for,
)
