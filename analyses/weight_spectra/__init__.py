"""Spectra of every weight matrix: effective rank, stable rank, nuclear norm, top singular value, WeightWatcher metrics.

Per layer and matrix kind (heads concatenated, see :func:`workbench.models.adapters.as_matrix`), plus the embedding and
unembedding, and optionally (``per_head``) every Q/K/V/O head as its own row (``head`` >= 0; whole matrices have
``head`` -1). All singular values come from one batched ``svdvals`` call per distinct shape
(:func:`workbench.spectra.batched_singular_values`). Effective rank: Roy & Vetterli (2007), eq. (1)-(2); stable rank:
‖W‖_F²/‖W‖₂² (Rudelson & Vershynin 2007), which equals WeightWatcher's ``stable_rank`` Σλ/λ_max.

WeightWatcher columns (:mod:`workbench.spectra.esd`, where the conventions read from weightwatcher 0.7.7 are listed):
the ESD is λ = σ² of W, the eigenvalues of WᵀW *without* 1/N as WeightWatcher computes it (dividing by N would shift
``log_norm`` and ``log_spectral_norm`` by −log10 N and leave everything else unchanged). ``alpha``: power-law tail
exponent, xmin by minimum KS distance; ``alpha_weighted`` = α·log10 λ_max; ``log_norm`` = log10 Σλ;
``log_spectral_norm`` = log10 λ_max; ``num_spikes`` and ``mp_softrank`` = λ₊/λ_max from the Marchenko–Pastur bulk
edge λ₊ of a fitted σ². Metrics run batched over all matrices of one shape. Values that cannot be fitted are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.errors import config_error
from workbench.models.adapters import GLOBAL_KINDS, LAYER_KINDS, as_matrix
from workbench.results import Config, Result
from workbench.spectra import (
    alpha_weighted,
    batched_singular_values,
    effective_rank,
    esd_eigenvalues,
    log_norm,
    log_spectral_norm,
    mp_fit,
    nuclear_norm,
    powerlaw_fit,
    stable_rank,
)
from workbench.validation import Bool, Choice, Int

from .plots import plot_alpha, plot_esd

WW_COLUMNS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "xmin", "ks_distance", "num_pl_spikes",
              "num_spikes", "mp_softrank")


@dataclass(frozen=True)
class WeightSpectraConfig(Config):
    """``include_embeddings``: also W_E and W_U (each a d_vocab × d_model SVD, the slowest part).

    ``per_head``: also each Q/K/V/O head as its own row. ``esd_matrix``/``esd_layer``: the matrix whose ESD is plotted
    with its fitted tail (``esd_layer`` -1 = the last layer; ignored for W_E/W_U).

    Example: ``run_analysis(lm, "weight_spectra", WeightSpectraConfig(per_head=True, esd_matrix="W_Q", esd_layer=5))``"""

    kind = "weight_spectra_config"
    include_embeddings: bool = True
    per_head: bool = False
    esd_matrix: str = "W_out"
    esd_layer: int = -1

    constraints = {"include_embeddings": Bool(), "per_head": Bool(), "esd_matrix": Choice(LAYER_KINDS + GLOBAL_KINDS),
                   "esd_layer": Int(low=-1, allowed_text="an int >= -1 (-1 = the last layer)")}


@dataclass(frozen=True)
class WeightSpectraResult(Result):
    """Column-wise: one entry per weight matrix (layer ``None`` for W_E/W_U, head -1 for whole matrices).

    Example: ``ww = run_analysis(lm, "weight_spectra"); ww.plot_sigma().show()``"""

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
    head: list[int]
    alpha: list[float | None]
    alpha_weighted: list[float | None]
    log_norm: list[float | None]
    log_spectral_norm: list[float | None]
    xmin: list[float | None]
    ks_distance: list[float | None]
    num_pl_spikes: list[int]
    num_spikes: list[int]
    mp_softrank: list[float | None]
    esd_label: str
    esd_eigenvalues: list[float]
    esd_fit: dict[str, float | None]

    def kinds(self) -> list[str]:
        """The per-layer matrix kinds present (W_E/W_U left out), in row order.

        Example: ``ww.kinds()  # e.g. ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"]``"""
        return [k for k in dict.fromkeys(self.matrix) if any(
            m == k and layer is not None for m, layer in zip(self.matrix, self.layer, strict=True))]

    def grid(self, column: str) -> tuple[list[int], list[str], list[list[float | None]]]:
        """``(layers, kinds, z[layer][kind])`` of one metric over the whole per-layer matrices (head -1).

        Example: ``layers, kinds, z = ww.grid("alpha")``"""
        layers = sorted({layer for layer in self.layer if layer is not None})
        kinds = self.kinds()
        values = {(m, layer): v for m, layer, h, v in zip(self.matrix, self.layer, self.head, getattr(self, column),
                                                          strict=True) if h == -1}
        return layers, kinds, [[values.get((k, layer)) for k in kinds] for layer in layers]

    def plot(self) -> go.Figure:
        fig = make_subplots(rows=1, cols=2, subplot_titles=("effective rank / min(shape)", "stable rank"))
        layers, kinds, erank = self.grid("erank")
        full = {(m, layer): min(s) for m, layer, s, h in zip(self.matrix, self.layer, self.shape, self.head,
                                                             strict=True) if h == -1}
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
        """Top singular value ‖W‖₂ per layer, one line per matrix kind.

        Example: ``ww.plot_sigma().show()``"""
        layers, kinds, z = self.grid("sigma_max")
        fig = go.Figure([go.Scatter(x=layers, y=[row[i] for row in z], mode="lines+markers", name=k)
                         for i, k in enumerate(kinds)])
        fig.update_layout(title="Top singular value ‖W‖₂ per layer", xaxis_title="layer", yaxis_title="σ_max",
                          height=420)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_sigma(), plot_alpha(self), plot_esd(self)]

    def table(self):
        header = ["matrix", "layer", "head", "shape", "erank", "stable rank", "nuclear norm", "σ_max", "α", "α weighted",
                  "log norm", "log spectral norm", "MP spikes", "MP softrank"]
        cols = zip(self.matrix, self.layer, self.head, self.shape, self.erank, self.stable_rank, self.nuclear_norm,
                   self.sigma_max, self.alpha, self.alpha_weighted, self.log_norm, self.log_spectral_norm,
                   self.num_spikes, self.mp_softrank, strict=True)
        rows = [[m, "-" if layer is None else layer, "-" if h == -1 else h, "×".join(map(str, s)), *rest]
                for m, layer, h, s, *rest in cols]
        return header, [["-" if v is None else v for v in row] for row in rows]

    def summary(self) -> str:
        layers, kinds, z = self.grid("erank")
        full = {(m, layer): min(s) for m, layer, s, h in zip(self.matrix, self.layer, self.shape, self.head,
                                                             strict=True) if h == -1}
        frac = {k: sum(z[i][j] / full[(k, layer)] for i, layer in enumerate(layers)) / len(layers)
                for j, k in enumerate(kinds)}
        lo, hi = min(frac, key=frac.get), max(frac, key=frac.get)
        return (f"{len(self.matrix)} matrices. Mean effective rank as a fraction of its maximum: lowest for {lo} "
                f"({frac[lo]:.2f}), highest for {hi} ({frac[hi]:.2f}).{self._alpha_summary()}")

    def _alpha_summary(self) -> str:
        alphas = [a for a, h in zip(self.alpha, self.head, strict=True) if a is not None and h == -1]
        if not alphas:
            return " No power-law tail could be fitted."
        inside = sum(2 <= a <= 6 for a in alphas)
        return (f" Power-law α: median {sorted(alphas)[len(alphas) // 2]:.2f}, {inside} of {len(alphas)} matrices in "
                "WeightWatcher's 2-6 range (small matrices give noisy fits).")


def _rows(inputs: Inputs, config: WeightSpectraConfig) -> list[tuple[str, int | None, int, torch.Tensor]]:
    """(kind, layer, head, 2-D matrix): whole matrices (head -1), then per-head Q/K/V/O slices if asked."""
    rows = []
    for kind, layer, w in inputs.weights:
        if layer is None and not config.include_embeddings:
            continue
        w = w.detach()
        rows.append((kind, layer, -1, as_matrix(kind, w)))
        if config.per_head and layer is not None and w.ndim == 3:
            rows.extend((kind, layer, h, w[h]) for h in range(w.shape[0]))
    return rows


def _value(v: float | int) -> float | int | None:
    """A JSON value: ints kept, None for NaN/Inf (so results round-trip and compare equal)."""
    return v if isinstance(v, int) or math.isfinite(v) else None


def _spectrum_columns(values: list[torch.Tensor]) -> dict[str, list[float]]:
    """Effective rank, stable rank, nuclear norm and σ_max of every spectrum, batched over the spectra of one length
    and read back to the host once per column and length (not once per matrix)."""
    out: dict[str, list] = {name: [None] * len(values) for name in ("erank", "stable_rank", "nuclear_norm",
                                                                    "sigma_max")}
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(values):
        groups.setdefault((s.shape[0], s.dtype, s.device), []).append(i)
    for idx in groups.values():
        s = torch.stack([values[i] for i in idx])
        cols = {"erank": effective_rank(s), "stable_rank": stable_rank(s), "nuclear_norm": nuclear_norm(s),
                "sigma_max": s[:, 0]}  # batched_singular_values returns descending values
        for name, tensor in cols.items():
            for i, v in zip(idx, tensor.tolist(), strict=True):
                out[name][i] = v
    return out


def _ww_columns(mats: list[torch.Tensor], values: list[torch.Tensor]) -> tuple[dict[str, list], list]:
    """WeightWatcher metrics, batched over the matrices of each shape; also every matrix's eigenvalues."""
    out: dict[str, list] = {name: [None] * len(mats) for name in WW_COLUMNS}
    evals: list = [None] * len(mats)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(i)
    for shape, idx in groups.items():
        lam = esd_eigenvalues(torch.stack([values[i] for i in idx]))
        fit, mp = powerlaw_fit(lam), mp_fit(lam, shape)
        cols = {"alpha": fit.alpha, "alpha_weighted": alpha_weighted(fit.alpha, lam), "log_norm": log_norm(lam),
                "log_spectral_norm": log_spectral_norm(lam), "xmin": fit.xmin, "ks_distance": fit.D,
                "num_pl_spikes": fit.num_pl_spikes, "num_spikes": mp.num_spikes, "mp_softrank": mp.mp_softrank}
        for row, i in enumerate(idx):
            evals[i] = lam[row]
        for name, tensor in cols.items():  # one device-to-host read per column and shape
            for i, v in zip(idx, tensor.tolist(), strict=True):
                out[name][i] = _value(v)
    return out, evals


def _esd_row(rows: list, config: WeightSpectraConfig) -> int:
    """Index of the matrix whose ESD is plotted (``esd_matrix``, ``esd_layer``; -1 = last layer)."""
    layers = [layer for _, layer, _, _ in rows if layer is not None]
    if config.esd_matrix in GLOBAL_KINDS:
        want = None
    else:
        last = max(layers, default=-1)
        want = last if config.esd_layer == -1 else config.esd_layer
        if want > last:
            raise config_error("WeightSpectraConfig", "esd_layer", f"-1 or an int in [0, {last}]", config.esd_layer)
    for i, (kind, layer, head, _) in enumerate(rows):
        if kind == config.esd_matrix and layer == want and head == -1:
            return i
    raise config_error("WeightSpectraConfig", "esd_matrix",
                       f"a matrix this run computed ({sorted({k for k, _, _, _ in rows})})", config.esd_matrix)


def compute(inputs: Inputs, config: WeightSpectraConfig) -> WeightSpectraResult:
    """Singular values of every weight matrix in one batched pass, their effective and stable rank, norms and the
    heavy-tailed (WeightWatcher) metrics, and the ESD of the chosen matrix.

    Example: ``compute(inputs, WeightSpectraConfig(per_head=True))  # what run_analysis(lm, "weight_spectra") calls``"""
    rows = _rows(inputs, config)
    mats = [w for _, _, _, w in rows]
    values = batched_singular_values(mats)
    ww, evals = _ww_columns(mats, values)
    e = _esd_row(rows, config)
    kind, layer, _, _ = rows[e]
    return WeightSpectraResult(
        model=inputs.model_name, matrix=[k for k, _, _, _ in rows], layer=[layer for _, layer, _, _ in rows],
        shape=[list(w.shape) for w in mats], **_spectrum_columns(values), head=[h for _, _, h, _ in rows], **ww,
        esd_label=kind if layer is None else f"{kind} layer {layer}",
        esd_eigenvalues=evals[e].sort().values.tolist(),
        esd_fit={"alpha": ww["alpha"][e], "xmin": ww["xmin"][e]},
    )


ANALYSIS = Analysis(
    name="weight_spectra",
    description="Effective rank, stable rank, nuclear norm, σ_max and WeightWatcher metrics (α, log norms, MP spikes) "
                "of every weight matrix",
    config=WeightSpectraConfig, result=WeightSpectraResult, compute=compute, needs_weights=True,
)
