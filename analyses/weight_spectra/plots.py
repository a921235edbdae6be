"""Plots of the WeightWatcher-style columns of :class:`analyses.weight_spectra.WeightSpectraResult`."""

from __future__ import annotations

import math

import plotly.graph_objects as go


def plot_alpha(result) -> go.Figure:
    """Power-law exponent alpha per layer, one line per matrix kind (whole-layer rows only).

    Example: ``plot_alpha(run_analysis(lm, "weight_spectra")).show()``"""
    layers, kinds, z = result.grid("alpha")
    fig = go.Figure([go.Scatter(x=layers, y=[row[i] for row in z], mode="lines+markers", name=k)
                     for i, k in enumerate(kinds)])
    fig.add_hrect(y0=2, y1=6, fillcolor="green", opacity=0.07, line_width=0)  # WeightWatcher's "well-trained" band
    fig.update_layout(title="Power-law tail exponent α per layer (WeightWatcher fit; 2 ≤ α ≤ 6 shaded)",
                      xaxis_title="layer", yaxis_title="α", height=420)
    return fig


def plot_esd(result) -> go.Figure:
    """Histogram of the chosen matrix's ESD on log–log axes, with the fitted power-law tail from xmin.

    Example: ``plot_esd(run_analysis(lm, "weight_spectra")).show()``"""
    evals = [v for v in result.esd_eigenvalues if v > 0]
    fig = go.Figure()
    if not evals:
        return fig
    lo, hi = math.log10(min(evals)), math.log10(max(evals))
    nbins = 60
    width = (hi - lo) / nbins or 1.0
    edges = [lo + i * width for i in range(nbins + 1)]
    counts = [0] * nbins
    for v in evals:
        counts[min(nbins - 1, int((math.log10(v) - lo) / width))] += 1
    centres = [10 ** ((a + b) / 2) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    dens = [c / (len(evals) * (10 ** b - 10 ** a)) for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True)]
    keep = [(x, d) for x, d in zip(centres, dens, strict=True) if d > 0]
    fig.add_trace(go.Scatter(x=[x for x, _ in keep], y=[d for _, d in keep], mode="markers+lines", name="ESD density",
                             line={"shape": "hvh"}))
    alpha, xmin = result.esd_fit["alpha"], result.esd_fit["xmin"]
    if alpha is not None and xmin is not None and math.isfinite(alpha) and math.isfinite(xmin) and alpha > 1:
        tail = sum(v >= xmin for v in evals) / len(evals)
        xs = [xmin * (max(evals) / xmin) ** (i / 49) for i in range(50)]
        ys = [tail * (alpha - 1) / xmin * (x / xmin) ** (-alpha) for x in xs]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"power law α={alpha:.2f}", line={"dash": "dash"}))
        # a trace, not add_vline: shapes on a log axis take log10 coordinates and would stretch the axis to 10^xmin
        heights = [d for _, d in keep] + ys
        fig.add_trace(go.Scatter(x=[xmin, xmin], y=[min(heights), max(heights)], mode="lines", name="xmin",
                                 line={"dash": "dot", "color": "grey"}))
    fig.update_xaxes(type="log", title_text="eigenvalue λ of WᵀW")
    fig.update_yaxes(type="log", title_text="density")
    fig.update_layout(title=f"ESD of {result.esd_label} (log–log) with the fitted tail", height=420)
    return fig
