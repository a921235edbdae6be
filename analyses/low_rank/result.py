"""The ``low_rank`` result: ranks per budget and matrix, error curves, the model-level trade-off and the verification
table, with their figures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.results import PALETTE, Result

from .verify import METHODS, cost

MODEL_BUDGETS = [round(10 ** (-3 + 0.1 * i), 6) for i in range(28)]  # 1e-3 … 0.5, for the whole-model curve


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


@dataclass(frozen=True)
class LowRankResult(Result):
    """Column-wise, one entry per matrix (``matrix`` kind, ``layer``): shapes, the numerical rank of its input
    second moment C, and for each of ``budgets`` the rank plain and whitened truncation need (``rank_plain[i][j]``:
    matrix i, budget j). ``curves``: full relative-error curves (index = rank) of the matrices of ``curve_layers``.
    ``model_fraction``: parameter fraction of the analysed matrices against ``model_budgets``, per method.
    ``verification``: one row per verification budget and method (see :mod:`.verify`).

    Example: ``r = run_analysis(lm, "low_rank"); r.verification_table()``"""

    kind = "low_rank"
    title = "Activation-aware low-rank compressibility"
    model: str
    n_calibration_texts: int
    n_calibration_tokens: int
    n_heldout_texts: int
    n_heldout_tokens: int
    budgets: list[float]
    map_budget: float
    matrix: list[str]
    layer: list[int]
    d_in: list[int]
    d_out: list[int]
    c_rank: list[int]
    rank_plain: list[list[int]]
    rank_whitened: list[list[int]]
    curves: list[dict]
    model_budgets: list[float]
    model_fraction: dict
    base_ppl: float | None
    verification: list[dict]
    seconds: dict

    @classmethod
    def build(cls, *, model, matrices, spectra, config, curve_layers, calibration, held_out, verification,
              seconds) -> LowRankResult:
        """Assemble the result from the per-matrix spectra (``compute`` calls this).

        Example: ``LowRankResult.build(model="m", matrices=ms, spectra=sp, config=cfg, curve_layers=[0], **more)``"""
        from .verify import ranks_at

        ranks = {method: [ranks_at(spectra, method, b) for b in config.budgets] for method in METHODS}
        dense = sum(math.prod(spectra[m]["shape"]) for m in matrices)
        fraction = {method: [sum(cost(r, spectra[m]["shape"]) for m, r in ranks_at(spectra, method, b).items()) / dense
                             for b in MODEL_BUDGETS] for method in METHODS}
        curves = [{"matrix": m[0], "layer": m[1], **{method: [round(float(v), 6) for v in spectra[m][method]]
                                                      for method in METHODS}}
                  for m in matrices if m[1] in curve_layers]
        return cls(
            model=model, n_calibration_texts=calibration[0], n_calibration_tokens=calibration[1],
            n_heldout_texts=held_out, n_heldout_tokens=verification["n_tokens"], budgets=list(config.budgets),
            map_budget=config.map_budget, matrix=[m[0] for m in matrices], layer=[m[1] for m in matrices],
            d_in=[spectra[m]["shape"][0] for m in matrices], d_out=[spectra[m]["shape"][1] for m in matrices],
            c_rank=[spectra[m]["c_rank"] for m in matrices],
            rank_plain=[[ranks["plain"][j][m] for j in range(len(config.budgets))] for m in matrices],
            rank_whitened=[[ranks["whitened"][j][m] for j in range(len(config.budgets))] for m in matrices],
            curves=curves, model_budgets=MODEL_BUDGETS, model_fraction=fraction, base_ppl=verification["base_ppl"],
            verification=verification["rows"], seconds=seconds)

    # --- tables ------------------------------------------------------------------------------------------------

    def _fraction(self, i: int, rank: int) -> float:
        return cost(rank, (self.d_in[i], self.d_out[i])) / (self.d_in[i] * self.d_out[i])

    def table(self) -> tuple[list[str], list[list[Any]]]:
        header = ["matrix", "layer", "d_in", "d_out", "rank of C"]
        for b in self.budgets:
            header += [f"rank plain @{_pct(b)}", f"rank whitened @{_pct(b)}", f"rank gap @{_pct(b)}",
                       f"params whitened @{_pct(b)}"]
        rows = []
        for i in range(len(self.matrix)):
            row = [self.matrix[i], self.layer[i], self.d_in[i], self.d_out[i], self.c_rank[i]]
            for j in range(len(self.budgets)):
                row += [self.rank_plain[i][j], self.rank_whitened[i][j], self.rank_plain[i][j] - self.rank_whitened[i][j],
                        self._fraction(i, self.rank_whitened[i][j])]
            rows.append(row)
        return header, rows

    def verification_table(self) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` of the verification: per budget and method, the parameter fraction, the predicted
        relative output error (RMS and worst over matrices), held-out perplexity, its ratio to the unmodified
        model's and top-1 agreement.

        Example: ``header, rows = result.verification_table()``"""
        header = ["budget", "method", "own budget", "param fraction", "matrices replaced", "predicted error (rms)",
                  "predicted error (max)", "perplexity", "ppl ratio", "top-1 agreement"]
        rows = [[v["budget"], v["method"], v["method_budget"], v["fraction"], v["replaced"], v["predicted_rms"],
                 v["predicted_max"], v["ppl"], v["ppl_ratio"], v["agreement"]] for v in self.verification]
        return header, rows

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """The table's numbers per matrix, plus each verification row as ``ppl ratio`` / ``top-1 agreement`` /
        ``param fraction`` at site ``verify/<method>/budget=<b>``."""
        out = super().metrics()
        for v in self.verification:
            site = f"verify/{v['method']}/budget={v['budget']:g}"
            out += [("ppl ratio", None, site, v["ppl_ratio"]), ("top-1 agreement", None, site, v["agreement"]),
                    ("param fraction", None, site, v["fraction"])]
        return out

    # --- figures -----------------------------------------------------------------------------------------------

    def plot(self) -> go.Figure:
        """The whole model's parameter fraction against a uniform error budget, plain vs whitened."""
        fig = go.Figure()
        for method, color in zip(METHODS, (PALETTE[0], PALETTE[1]), strict=True):
            fig.add_trace(go.Scatter(x=self.model_budgets, y=self.model_fraction[method], mode="lines+markers",
                                     name=f"{method} truncation", line={"color": color}))
        for v in self.verification:
            fig.add_trace(go.Scatter(x=[v["budget"]], y=[v["fraction"]], mode="markers", showlegend=False,
                                     marker={"symbol": "x", "size": 10, "color": "black"},
                                     hovertext=f"verified: ppl ×{v['ppl_ratio']:.3g}"))
        fig.add_hline(y=1.0, line_dash="dot", line_color="gray")
        fig.update_layout(title=f"{self.model}: parameters kept vs relative output error allowed per matrix",
                          xaxis_title="error budget ‖C½(W−W_r)‖/‖C½W‖ (every matrix)", xaxis_type="log",
                          yaxis_title="parameter fraction (factored)", height=450)
        return fig

    def plot_map(self) -> go.Figure:
        """Layer × matrix heat-maps of the rank each method needs at ``map_budget``, as a fraction of full rank.

        Example: ``result.plot_map().show()``"""
        j = self.budgets.index(self.map_budget)
        kinds = list(dict.fromkeys(self.matrix))
        layers = sorted(set(self.layer))
        fig = make_subplots(rows=1, cols=2, subplot_titles=("plain", "whitened"), shared_yaxes=True)
        for col, ranks in ((1, self.rank_plain), (2, self.rank_whitened)):
            z = [[None] * len(kinds) for _ in layers]
            text = [[""] * len(kinds) for _ in layers]
            for i, (kind, layer) in enumerate(zip(self.matrix, self.layer, strict=True)):
                full = min(self.d_in[i], self.d_out[i])
                z[layers.index(layer)][kinds.index(kind)] = ranks[i][j] / full
                text[layers.index(layer)][kinds.index(kind)] = f"{ranks[i][j]}/{full}"
            fig.add_trace(go.Heatmap(z=z, x=kinds, y=layers, text=text, zmin=0, zmax=1, colorscale="Viridis",
                                     showscale=col == 2, hovertemplate="%{x} L%{y}: rank %{text}<extra></extra>"),
                          row=1, col=col)
        fig.update_yaxes(title_text="layer", col=1)
        fig.update_layout(title=f"Rank needed for {_pct(self.map_budget)} output error (fraction of full rank)",
                          height=max(450, 16 * len(layers) + 150))
        return fig

    def plot_curves(self) -> go.Figure:
        """Relative output error against rank for the matrices of the curve layers (solid whitened, dotted plain).

        Example: ``result.plot_curves().show()``"""
        fig = go.Figure()
        kinds = list(dict.fromkeys(c["matrix"] for c in self.curves))
        for c in self.curves:
            color = PALETTE[kinds.index(c["matrix"]) % len(PALETTE)]
            for method, dash in (("whitened", "solid"), ("plain", "dot")):
                fig.add_trace(go.Scatter(y=[max(v, 1e-4) for v in c[method]], mode="lines", line={"color": color,
                                         "dash": dash}, name=f"{c['matrix']} L{c['layer']} {method}",
                                         legendgroup=f"{c['matrix']}{c['layer']}"))
        fig.update_layout(title="Relative output error vs rank (solid: whitened, dotted: plain)", xaxis_title="rank r",
                          yaxis_title="‖C½(W−W_r)‖/‖C½W‖ (clipped at 1e-4)", yaxis_type="log",
                          yaxis_range=[-4, 0.05], height=500)
        return fig

    def plot_verification(self) -> go.Figure | None:
        """Predicted error (RMS over matrices) against the measured held-out perplexity ratio, per method; None
        without verification.

        Example: ``result.plot_verification().show()``"""
        if not self.verification:
            return None
        fig = make_subplots(rows=1, cols=2, subplot_titles=("perplexity ratio", "top-1 agreement"))
        for method, color in zip(METHODS, (PALETTE[0], PALETTE[1]), strict=True):
            rows = [v for v in self.verification if v["method"] == method]
            text = [f"budget {v['budget']:g}, params {v['fraction']:.2f}" for v in rows]
            for col, key in ((1, "ppl_ratio"), (2, "agreement")):
                fig.add_trace(go.Scatter(x=[v["fraction"] for v in rows], y=[v[key] for v in rows], text=text,
                                         mode="lines+markers", name=method, line={"color": color},
                                         showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="parameter fraction kept")
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_layout(title=f"Truncated {self.model} on {self.n_heldout_tokens} held-out tokens "
                                f"(unmodified perplexity {self.base_ppl:.3g})", height=420)
        return fig

    def figures(self) -> list[go.Figure]:
        return [f for f in (self.plot(), self.plot_map(), self.plot_curves(), self.plot_verification()) if f]

    def summary(self) -> str:
        j = self.budgets.index(self.map_budget)
        n = len(self.matrix)
        white = sum(self._fraction(i, self.rank_whitened[i][j]) * self.d_in[i] * self.d_out[i] for i in range(n))
        plain = sum(self._fraction(i, self.rank_plain[i][j]) * self.d_in[i] * self.d_out[i] for i in range(n))
        dense = sum(self.d_in[i] * self.d_out[i] for i in range(n))
        deficient = sum(self.c_rank[i] < self.d_in[i] for i in range(n))
        parts = [f"At {_pct(self.map_budget)} relative output error per matrix, whitened truncation keeps "
                 f"{white / dense:.1%} of the {n} matrices' parameters and plain truncation {plain / dense:.1%} "
                 f"(calibration: {self.n_calibration_tokens} tokens of {self.n_calibration_texts} texts)"]
        if deficient:
            parts.append(f"{deficient} matrices' input second moment is rank-deficient on these tokens (directions "
                         f"the text never excites cost nothing to drop; the truncation maps them to their output within the kept "
                         f"directions, untested by the calibration text)")
        for budget in sorted({v["budget"] for v in self.verification}):
            w, p = (next(v for v in self.verification if v["budget"] == budget and v["method"] == m) for m in METHODS)
            better = "whitened" if w["ppl_ratio"] < p["ppl_ratio"] else "plain"
            parts.append(f"budget {_pct(budget)}: {w['fraction']:.1%} of the parameters; held-out perplexity ×"
                         f"{w['ppl_ratio']:.3g} whitened vs ×{p['ppl_ratio']:.3g} plain at the same size "
                         f"({better} is better), top-1 agreement {w['agreement']:.2f} vs {p['agreement']:.2f}")
        return "; ".join(parts) + "."
