"""The comparative figures and DIR/report.html on a synthetic sweep with known numbers: each line holds its cell's
values per layer, site kinds stay apart (a dropdown), the step figure is the mean over layers against the sorted
steps, the report inlines plotly.js once, lists failed cells with their errors, and says when the sweep is empty."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workbench.sweeps.synthetic import ERROR, LAYERS, STEPS, make_sweep, records, value, write_database
from workbench.errors import ConfigError
from workbench.results import PALETTE
from workbench.sweeps.compare import (
    layer_figure,
    read_sweep,
    site_kind,
    step_figure,
    write_sweep_report,
)

SORTED = sorted(STEPS)


@pytest.fixture
def sweep(tmp_path) -> Path:
    make_sweep(tmp_path / "sw")
    return tmp_path / "sw"


@pytest.fixture
def tables(sweep):
    return read_sweep(sweep)


def visible(fig, kind: str | None = None) -> dict[str, tuple[list, list]]:
    """``{line name: (x, y)}`` of the traces shown (for ``kind``: those its dropdown entry shows)."""
    shown = [t.visible for t in fig.data]
    if kind is not None:
        button = next(b for b in fig.layout.updatemenus[0].buttons if b.label == kind)
        shown = button.args[0]["visible"]
    return {t.name: (list(map(float, t.x)), list(map(float, t.y))) for t, on in zip(fig.data, shown) if on}


def test_site_kinds_drop_the_layer_and_keep_heads_apart():
    assert site_kind("blocks.11.hook_resid_post") == "hook_resid_post"
    assert site_kind("blocks.3.attn.hook_z") == "attn.hook_z"
    assert site_kind("W_Q") == "W_Q" and site_kind("W_Q.h3") == "W_Q per head"
    assert site_kind(None) == "(no site)"


def test_layer_figure_has_one_line_per_model_with_its_values(tables):
    cells, metrics = tables
    fig = layer_figure(metrics, "activation_spectra", "erank (centred)", cells_df=cells)
    for kind in ("hook_resid_post", "hook_attn_out"):
        lines = visible(fig, kind)
        assert list(lines) == ["SmolLM2", "step-100", "step-200", "step-300"]  # checkpoints in step order
        for name, step in [("SmolLM2", None)] + [(f"step-{s}", s) for s in SORTED]:
            assert lines[name] == ([float(x) for x in LAYERS],
                                   [value(step, layer, kind, "erank (centred)") for layer in LAYERS])
    assert visible(fig) == visible(fig, "hook_resid_post")  # the residual stream shows first
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "erank (centred)"
    assert all("step-100" in t.hovertemplate and "step 100" in t.hovertemplate
               for t in fig.data if t.name == "step-100")


def test_layer_figure_colours_a_checkpoint_family_by_step(tables):
    cells, metrics = tables
    fig = layer_figure(metrics, "activation_spectra", "tokens", cells_df=cells)
    colours = {t.name: t.line.color for t in fig.data if t.visible}
    assert colours["SmolLM2"] in PALETTE and colours["step-300"] in PALETTE  # the latest step: the palette colour
    assert len({colours[f"step-{s}"] for s in STEPS}) == 3 and colours["SmolLM2"] != colours["step-300"]


def test_layer_figure_averages_heads_and_leaves_out_rows_without_a_layer(tables):
    cells, metrics = tables
    fig = layer_figure(metrics, "weight_spectra", "erank", cells_df=cells)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["W_Q", "W_Q per head"]  # no W_E: no layer
    heads = visible(fig, "W_Q per head")
    assert heads["step-200"][1] == [value(200, layer, "W_Q.h", "erank") + 1 for layer in LAYERS]  # heads 0, 1: +0, +2
    assert "SmolLM2" not in heads  # its weight_spectra cell failed: no line


def test_legend_names_prompts_and_config_only_when_they_vary(tmp_path):
    recs = [r for r in records(tmp_path) if r["analysis"] == "activation_spectra" and r["step"] == 100]
    other = dict(recs[0], id="a-code", prompts="bundled:code", config={"max_rows": 64})
    write_database(tmp_path / "sw", [*recs, other])
    cells, metrics = read_sweep(tmp_path / "sw")
    names = {t.name for t in layer_figure(metrics, "activation_spectra", "tokens", cells_df=cells).data if t.visible}
    assert names == {"step-100 · bundled:prose · defaults", "step-100 · bundled:code · max_rows=64"}
    alone = [t.name for t in layer_figure(metrics[metrics["cell"] != "a-code"], "activation_spectra", "tokens",
                                          cells_df=cells).data if t.visible]
    assert alone == ["step-100"]


def test_step_figure_is_the_mean_over_layers_against_sorted_steps(tables):
    cells, metrics = tables
    fig = step_figure(cells, metrics, "activation_spectra", "erank (centred)")
    mean = [sum(value(s, layer, "hook_attn_out", "erank (centred)") for layer in LAYERS) / len(LAYERS)
            for s in SORTED]
    assert visible(fig, "hook_attn_out") == {"ckpts": ([float(s) for s in SORTED], mean)}  # SmolLM2 has no step
    assert fig.layout.xaxis.title.text == "checkpoint step"
    weights = step_figure(cells, metrics, "weight_spectra", "erank")
    assert [b.label for b in weights.layout.updatemenus[0].buttons] == ["W_Q", "W_Q per head", "W_E"]
    assert visible(weights, "W_E")["ckpts"][1] == [value(s, None, "W_E", "erank") for s in SORTED]


def test_no_steps_no_step_figure(tables):
    cells, metrics = tables
    no_steps = cells.assign(step=None)
    assert step_figure(no_steps, metrics, "activation_spectra", "tokens") is None


def test_figures_refuse_unknown_names_and_tables_without_cells(tables):
    cells, metrics = tables
    with pytest.raises(ConfigError, match="parameter 'metric'.*erank"):
        layer_figure(metrics, "activation_spectra", "alpha", cells_df=cells)
    with pytest.raises(ConfigError, match="parameter 'analysis'"):
        step_figure(cells, metrics, "rankme", "tokens")
    with pytest.raises(ConfigError, match="cells_df"):
        layer_figure(metrics, "activation_spectra", "tokens")


def test_report_is_self_contained_and_lists_failed_cells(sweep):
    from plotly.offline import get_plotlyjs

    path = write_sweep_report(sweep)
    text = path.read_text(encoding="utf-8")
    assert path == sweep / "report.html"
    assert text.count(get_plotlyjs()) == 1 and text.count("<script type='text/javascript'>/**") == 1
    assert "<script src" not in text and "<script type='text/javascript' src" not in text  # nothing fetched
    assert "8 cells: 7 done, 1 failed" in text
    failed = text[text.index("<h2>Failed cells</h2>"):text.index("<section")]
    assert ERROR in failed and "w-SmolLM2" in failed
    assert "mean erank (centred) vs step" in text and "erank (centred) per layer" in text
    assert all(f"a-step-{s}" in text[text.index("<h2>Cells</h2>"):] for s in STEPS)
    assert [p.name for p in sweep.iterdir() if p.name.startswith(".report")] == []


def test_report_without_steps_has_no_step_figures(tmp_path):
    write_database(tmp_path / "sw", [r for r in records(tmp_path) if r["step"] is None])
    text = write_sweep_report(tmp_path / "sw").read_text(encoding="utf-8")
    assert "per layer" in text and "vs step" not in text


def test_report_of_an_empty_sweep_says_so(tmp_path):
    (tmp_path / "sw" / "cells").mkdir(parents=True)
    text = write_sweep_report(tmp_path / "sw").read_text(encoding="utf-8")
    assert "0 cells" in text and "holds no cells yet" in text
    with pytest.raises(ConfigError, match="parameter 'out'"):
        write_sweep_report(tmp_path / "missing")


def test_report_write_is_atomic(sweep, monkeypatch):
    old = write_sweep_report(sweep).read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("workbench.sweeps.compare.report_html", lambda *a: "x" * 10)
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_sweep_report(sweep)
    assert (sweep / "report.html").read_bytes() == old
    assert [p.name for p in sweep.iterdir() if p.name.startswith(".report")] == []

