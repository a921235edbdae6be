"""Spectra of every weight matrix: effective rank, stable rank, nuclear norm and top singular value per layer.

Per layer and matrix kind (heads concatenated, see :func:`workbench.models.adapters.as_matrix`), plus the embedding and
unembedding. All singular values come from one batched ``svdvals`` call per distinct shape
(:func:`workbench.spectra.batched_singular_values`). Effective rank: Roy & Vetterli (2007), eq. (1)-(2); stable rank:
‖W‖_F²/‖W‖₂² (Rudelson & Vershynin 2007).
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.models.adapters import as_matrix
from workbench.registry import Analysis, register
from workbench.results import Config, Result
from workbench.runner import Inputs
from workbench.spectra import batched_singular_values, effective_rank, nuclear_norm, stable_rank


@dataclass(frozen=True)
class WeightSpectraConfig(Config):
    """``include_embeddings``: also W_E and W_U (each a d_vocab × d_model SVD, the slowest part)."""

    kind = "weight_spectra_config"
    include_embeddings: bool = True

    def validate(self) -> None:
        self.check("include_embeddings", isinstance(self.include_embeddings, bool), "a bool")


@dataclass(frozen=True)
class WeightSpectraResult(Result):
    """Column-wise: one entry per weight matrix (layer ``None`` for W_E/W_U)."""

    kind = "weight_spectra"
    title = "Weight spectra per layer and matrix kind"
    model: str
    matrix: list[str]
    layer: list[int | None]
    shape: list[list[int]]
    erank: list[float]
    stable_rank: list[float]
    nuclear_norm: list[float]
    sigma_max: list[float]

    def kinds(self) -> list[str]:
        return [k for k in dict.fromkeys(self.matrix) if any(
            m == k and layer is not None for m, layer in zip(self.matrix, self.layer, strict=True))]

    def grid(self, column: str) -> tuple[list[int], list[str], list[list[float | None]]]:
        """``(layers, kinds, z[layer][kind])`` of one metric over the per-layer matrices."""
        layers = sorted({layer for layer in self.layer if layer is not None})
        kinds = self.kinds()
        values = {(m, layer): v for m, layer, v in zip(self.matrix, self.layer, getattr(self, column), strict=True)}
        return layers, kinds, [[values.get((k, layer)) for k in kinds] for layer in layers]

    def plot(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("effective rank / min(shape)", "stable rank"))
        layers, kinds, erank = self.grid("erank")
        full = {(m, layer): min(s) for m, layer, s in zip(self.matrix, self.layer, self.shape, strict=True)}
        ratio = [[None if v is None else v / full[(k, layer)] for k, v in zip(kinds, row, strict=True)]
                 for layer, row in zip(layers, erank, strict=True)]
        fig.add_trace(go.Heatmap(z=ratio, x=kinds, y=layers, colorscale="Viridis", customdata=erank,
                                 hovertemplate="layer %{y} %{x}<br>erank %{customdata:.1f} (%{z:.2f} of max)",
                                 colorbar={"x": 0.45, "title": "fraction"}), row=1, col=1)
        _, _, srank = self.grid("stable_rank")
        fig.add_trace(go.Heatmap(z=srank, x=kinds, y=layers, colorscale="Magma", colorbar={"title": "stable"}),
                      row=1, col=2)
        fig.update_yaxes(title_text="layer", col=1)
        fig.update_layout(title=f"{self.model}: weight spectra (layer × matrix)", height=560)
        return fig

    def plot_sigma(self) -> go.Figure:
        layers, kinds, z = self.grid("sigma_max")
        fig = go.Figure([go.Scatter(x=layers, y=[row[i] for row in z], mode="lines+markers", name=k)
                         for i, k in enumerate(kinds)])
        fig.update_layout(title="Top singular value ‖W‖₂ per layer", xaxis_title="layer", yaxis_title="σ_max",
                          height=420)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_sigma()]

    def table(self):
        header = ["matrix", "layer", "shape", "erank", "stable rank", "nuclear norm", "σ_max"]
        rows = [[m, "-" if layer is None else layer, "×".join(map(str, s)), e, sr, nn, sm] for m, layer, s, e, sr, nn, sm
                in zip(self.matrix, self.layer, self.shape, self.erank, self.stable_rank, self.nuclear_norm,
                       self.sigma_max, strict=True)]
        return header, rows

    def summary(self) -> str:
        layers, kinds, z = self.grid("erank")
        full = {(m, layer): min(s) for m, layer, s in zip(self.matrix, self.layer, self.shape, strict=True)}
        frac = {k: sum(z[i][j] / full[(k, layer)] for i, layer in enumerate(layers)) / len(layers)
                for j, k in enumerate(kinds)}
        lo, hi = min(frac, key=frac.get), max(frac, key=frac.get)
        return (f"{len(self.matrix)} matrices. Mean effective rank as a fraction of its maximum: lowest for {lo} "
                f"({frac[lo]:.2f}), highest for {hi} ({frac[hi]:.2f}).")


def compute(inputs: Inputs, config: WeightSpectraConfig) -> WeightSpectraResult:
    chosen = [(k, layer, as_matrix(k, w).detach()) for k, layer, w in inputs.weights
              if layer is not None or config.include_embeddings]
    values = batched_singular_values([w for _, _, w in chosen])
    return WeightSpectraResult(
        model=inputs.model_name, matrix=[k for k, _, _ in chosen], layer=[layer for _, layer, _ in chosen],
        shape=[list(w.shape) for _, _, w in chosen], erank=[float(effective_rank(s)) for s in values],
        stable_rank=[float(stable_rank(s)) for s in values], nuclear_norm=[float(nuclear_norm(s)) for s in values],
        sigma_max=[float(s[0]) for s in values],
    )


register(Analysis(
    name="weight_spectra",
    description="Effective rank, stable rank, nuclear norm and top singular value of every weight matrix",
    config=WeightSpectraConfig, result=WeightSpectraResult, compute=compute, needs_weights=True,
))
