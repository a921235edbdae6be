"""Plots of :class:`analyses.language_neurons.LanguageNeuronsResult`: stage I features, stage II spectra and layer
scores, stage III steering trade-off."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.results import PALETTE

METHOD_COLOURS = {"none": "#000000", "sparse": PALETTE[1], "dense": PALETTE[0], "random": "#7f7f7f"}


def stage1_figure(stage1: list[dict]) -> go.Figure:
    """Selectivity vs causal lift of every candidate SAE feature, by layer; kept features (the language neurons)
    drawn filled.

    Example: ``stage1_figure(result.stage1).show()``"""
    fig = go.Figure()
    for i, entry in enumerate(stage1):
        colour = PALETTE[i % len(PALETTE)]
        for kept in (True, False):
            c = [f for f in entry["candidates"] if f["kept"] is kept]
            fig.add_trace(go.Scatter(
                x=[f["selectivity"] for f in c], y=[f["lift"] for f in c], mode="markers",
                marker={"color": colour, "size": 9 if kept else 6, "symbol": "circle" if kept else "circle-open"},
                name=f"L{entry['layer']}" + (" kept" if kept else ""), legendgroup=str(entry["layer"]),
                showlegend=kept or not any(f["kept"] for f in entry["candidates"]),
                text=[f"SAE feature {f['feature']}" for f in c],
                hovertemplate="%{text}<br>Sel %{x:.2f}, lift %{y:.4f}<extra></extra>"))
    if not fig.data:
        fig.add_trace(go.Scatter(x=[e["layer"] for e in stage1], y=[e["max_selectivity"] for e in stage1],
                                 mode="markers", name="max selectivity (no candidates)"))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(title="Stage I: Spanish selectivity vs causal lift (ΔM/α, median over α) of the most selective "
                            "SAE features; filled = kept", xaxis_title="selectivity Sel", yaxis_title="causal lift",
                      height=440)
    return fig


def spectra_figure(stage2: list[dict]) -> go.Figure:
    """Per layer: normalised singular values of ΔZ on the language neurons, and the eigengaps σ_i/σ_{i+1}.

    Example: ``spectra_figure(result.stage2).show()``"""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("σ_i / σ_1 of ΔZ (language neurons)",
                                                        "eigengap σ_i / σ_{i+1}"))
    for i, e in enumerate(s for s in stage2 if s["singular_values"]):
        s = e["singular_values"]
        colour = PALETTE[i % len(PALETTE)]
        name = f"L{e['layer']} (erank {e['erank']:.1f}, r={e['rank']})"
        fig.add_trace(go.Scatter(x=list(range(1, len(s) + 1)), y=[v / s[0] for v in s], mode="lines+markers",
                                 line={"color": colour}, name=name, legendgroup=name), row=1, col=1)
        gaps = [a / b if b > 0 else math.nan for a, b in zip(s, s[1:])]
        fig.add_trace(go.Scatter(x=list(range(1, len(gaps) + 1)), y=gaps, mode="lines+markers",
                                 line={"color": colour}, name=name, legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="i")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title="Stage II: spectrum of ΔZ, the paired Spanish − English SAE-code differences on the language neurons", height=420)
    return fig


def layer_figure(stage2: list[dict], window: list[int] | None) -> go.Figure:
    """Layer score = top-r spectral mass × bootstrap stability, with its two factors; the window shaded.

    Example: ``layer_figure(result.stage2, result.window).show()``"""
    layers = [e["layer"] for e in stage2]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=layers, y=[e["score"] for e in stage2], name="score", marker_color=PALETTE[1]))
    for key, colour in (("top_mass", PALETTE[0]), ("stability", PALETTE[2])):
        fig.add_trace(go.Scatter(x=layers, y=[e[key] for e in stage2], mode="lines+markers", name=key,
                                 line={"color": colour}))
    if window is not None:
        fig.add_vrect(x0=window[0] - 0.5, x1=window[1] + 0.5, fillcolor="orange", opacity=0.15, line_width=0,
                      annotation_text=f"window L{window[0]}–L{window[1]}")
    fig.update_layout(title="Stage II: layer score (top-r mass × stability) and the steering window",
                      xaxis_title="layer", yaxis_title="score", height=400)
    return fig


def steering_figure(rows: list[dict]) -> go.Figure:
    """Spanish fraction and margin change against the utility cost (perplexity ratio), one trace per method.

    Example: ``steering_figure(result.steering).show()``"""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Spanish continuations vs utility cost",
                                                        "next-token margin change ΔM vs utility cost"))
    for method, colour in METHOD_COLOURS.items():
        chosen = [r for r in rows if r["method"] == method]
        if not chosen:
            continue
        text = [f"λ={r['lam']}, β/λ={r['ratio']}" + (f", seed {r['seed']}" if r["seed"] is not None else "")
                for r in chosen]
        for col, key in ((1, "spanish_fraction"), (2, "delta_margin")):
            fig.add_trace(go.Scatter(x=[r["ppl_ratio"] for r in chosen], y=[r[key] for r in chosen], mode="markers",
                                     marker={"color": colour, "size": 10 if method == "none" else 8},
                                     name=method, legendgroup=method, showlegend=col == 1, text=text,
                                     hovertemplate="%{text}<br>ppl ratio %{x:.2f}: %{y:.3f}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="perplexity ratio of the unsteered continuation (1 = no cost)", type="log")
    fig.update_yaxes(title_text="fraction Spanish", range=[-0.05, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="ΔM", row=1, col=2)
    fig.update_layout(title="Stage III: steering held-out English prompts toward Spanish — sparse shift vs dense "
                            "difference of means vs random unit sets", height=440)
    return fig
