"""Notebook HTML (issue 19): plotly.js inlined once per session, ``Result.to_pandas()``, ``Report._repr_html_``."""

from __future__ import annotations

import math
import numbers
import re

import pandas as pd
import pytest
import torch
from plotly.offline import get_plotlyjs

from workbench import results
from workbench.report import Report
from workbench.runner import run_analysis
from workbench_analyses.weight_spectra import WeightSpectraConfig

TEXTS = ["the cat sat on the mat", "a b c d e f g", "one two three four", "hello world again"]
PLOTLYJS_TAIL = get_plotlyjs()[-300:]  # a piece of plotly.min.js that the figure divs never contain


@pytest.fixture(scope="module")
def two_results(tiny_model):
    act = run_analysis(tiny_model, "activation_spectra", texts=TEXTS)
    ww = run_analysis(tiny_model, "weight_spectra", WeightSpectraConfig(per_head=True, esd_matrix="W_Q", esd_layer=1))
    return act, ww


@pytest.fixture(autouse=True)
def fresh_session():
    results.reset_notebook_plotlyjs()  # as after a kernel restart
    yield
    results.reset_notebook_plotlyjs()


def _div_ids(text: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', text)


def test_ten_results_inline_plotlyjs_once_and_stay_small(two_results):
    # ten distinct result objects, as ten notebook cells would hold
    ten = [type(r).from_dict(r.to_dict()) for r in two_results * 5]
    pages = [r._repr_html_() for r in ten]
    total = "".join(pages)
    assert total.count(PLOTLYJS_TAIL) == 1 and pages[0].count(PLOTLYJS_TAIL) == 1
    assert len(total.encode()) < 6 * 2**20, len(total.encode())
    assert len(total.encode()) < len(get_plotlyjs().encode()) + 2**20  # the rest is small next to plotly.js
    for r, page in zip(ten, pages, strict=True):  # each figure's div is there, and drawn by the global Plotly
        ids = _div_ids(page)
        assert len(ids) == len(r.figures()) >= 1 and len(set(ids)) == len(ids)
        assert all(re.search(r'Plotly\.newPlot\(\s*"' + re.escape(i) + '"', page) for i in ids)
        assert r.title in page
    assert len(set(_div_ids(total))) == sum(len(r.figures()) for r in ten)


def test_reset_inlines_plotlyjs_again(two_results):
    act, _ = two_results
    assert PLOTLYJS_TAIL in act._repr_html_()
    assert PLOTLYJS_TAIL not in act._repr_html_()
    results.reset_notebook_plotlyjs()
    assert PLOTLYJS_TAIL in act._repr_html_()


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("which", [0, 1], ids=["activation_spectra", "weight_spectra"])
def test_to_pandas_matches_table_and_metrics(two_results, which):
    r = two_results[which]
    header, rows = r.table()
    df = r.to_pandas()
    assert list(df.columns) == header and len(df) == len(rows) > 0
    for row, (_, got) in zip(rows, df.iterrows(), strict=True):
        assert all(_same(a, b) for a, b in zip(row, got.tolist(), strict=True))
    long = r.to_pandas(long=True)
    metrics = r.metrics()
    assert list(long.columns) == ["metric", "layer", "site", "value"] and len(long) == len(metrics) > 0
    assert str(long["layer"].dtype) == "Int64"
    for m, got in zip(metrics, long.itertuples(index=False), strict=True):
        assert got.metric == m[0] and got.site == m[2] and _same(got.value, m[3])
        assert pd.isna(got.layer) if m[1] is None else (got.layer == m[1] and isinstance(got.layer, numbers.Integral))


def test_to_pandas_of_a_result_without_a_table():
    r = results.Result()
    assert r.to_pandas().empty and list(r.to_pandas(long=True).columns) == ["metric", "layer", "site", "value"]


def test_report_repr_html_has_each_section_and_plotlyjs_once(two_results):
    act, ww = two_results
    report = Report({"activation_spectra": act, "weight_spectra": ww}, provenance={"model": "tiny", "seed": 0})
    first, second = report._repr_html_(), report._repr_html_()
    assert first.count(PLOTLYJS_TAIL) == 1 and PLOTLYJS_TAIL not in second
    for page in (first, second):
        assert "<section id='activation_spectra'>" in page and "<section id='weight_spectra'>" in page
        assert len(_div_ids(page)) == len(act.figures()) + len(ww.figures())
        assert "Provenance" in page and "tiny" in page
    assert len(second.encode()) < 2**20


def test_text_token_maps_repr_shares_the_one_plotlyjs(tiny_model, two_results):
    from workbench.tam import text_token_maps

    maps = text_token_maps(tiny_model, "abcab c", max_new_tokens=2)
    first = two_results[0]._repr_html_()
    page = maps._repr_html_()
    assert PLOTLYJS_TAIL in first and PLOTLYJS_TAIL not in page and len(_div_ids(page)) == 1


# ---------------------------------------------------------------------------------------------------------------------
# rich displays of capture results, SAEs, DAS fits and edit handles: compact tables of stored numbers, escaped


def _numbers_in(page: str, *values) -> bool:
    return all(results.fmt(v) in page for v in values)


def test_capture_result_and_site_stats_repr_html(tiny_model):
    import dataclasses

    from workbench.capture import capture

    cap = capture(tiny_model, TEXTS[:2], sites="blocks.*.hook_resid_post", batch_size=2, keep="per_prompt")
    page = cap._repr_html_()
    assert page.count("<tr>") == 8 + len(cap.meta) + len(cap.sites) + 2  # run settings, one row per site, 2 headers
    assert PLOTLYJS_TAIL not in page and "<script" not in page
    for site in cap.sites:
        s = cap[site]
        row = f"<td>{site}</td><td>{s.n}</td><td>{s.d}</td>"
        assert row in page and row in s._repr_html_() and f"last [{len(TEXTS[:2])}, {s.d}]" in page
        assert _numbers_in(page, float(s.mean.double().norm()), float(s.comoment.trace()) / (s.n - 1))
    assert f"<td>tokens</td><td>{cap.n_tokens}</td>" in page and cap.model in page
    assert repr(cap).startswith("CaptureResult(") and len(repr(cap)) < 200 and "tensor" not in repr(cap[cap.sites[0]])
    # user strings are escaped: a site or model called "<b>"
    stats = dataclasses.replace(cap[cap.sites[0]], site="<b>site")
    meta = {"<b>key": "<i>", "big": torch.zeros(3, 4), "keep": ["per_prompt"] * 30}
    bad = dataclasses.replace(cap, stats={"<b>site": stats}, model="<b>model", meta=meta)
    for text in (bad._repr_html_(), stats._repr_html_()):
        assert "&lt;b&gt;site" in text and "<b>" not in text and "<i>" not in text
    page = bad._repr_html_()
    assert "&lt;b&gt;model" in page and "&lt;b&gt;key" in page and "<td>tensor [3, 4]</td>" in page
    assert "[&#x27;per_prompt&#x27;, " in page and page.count("per_prompt") < 10  # a long value is cut


def test_trained_sae_repr_html(tmp_path):
    from workbench.sae import cached_sae, train_sae

    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    sae = train_sae(data, d_sae=16, k=2, epochs=1, batch_size=32)
    page = sae._repr_html_()
    for name, value in (("architecture", "topk"), ("d_in", 8), ("d_sae", 16), ("k", 2), ("FVU", sae.fvu),
                        ("L0", sae.l0), ("epochs", 1)):
        assert f"<td>{name}</td><td>{results.fmt(value)}</td>" in page
    assert "<td>path</td><td>-</td>" in page and "key" not in page
    assert "d_sae=16" in repr(sae) and "Parameter" not in repr(sae)
    cached = cached_sae(data, key={"site": "<b>x", "model": "tiny"}, cache_dir=tmp_path, d_sae=16, k=2, epochs=1,
                        batch_size=32)
    again = cached_sae(data, key={"model": "tiny", "site": "<b>x"}, cache_dir=tmp_path, d_sae=16, k=2, epochs=1,
                       batch_size=32)  # a cache hit: key and path come back from the disk
    for hit in (cached, again):
        text = hit._repr_html_()
        assert hit.key == {"site": "<b>x", "model": "tiny"} and str(hit.path) in text
        assert "&lt;b&gt;x" in text and "<b>" not in text and results.fmt(hit.fvu) in text


def test_das_fit_repr_html():
    import dataclasses

    from tests.workbench.intervene.distilled import Distilled, pairs
    from workbench.intervene.das import DASFit, train_das

    base, source, _, cf = pairs(10)
    fit = train_das(Distilled(), base, source, cf, site="hook_hidden", epochs=2, batch_size=5, seed=0)
    page = fit._repr_html_()
    assert fit.site == "hook_hidden" and "hook_hidden" in page and "[2, 1]" in page
    assert "<td>epochs run</td><td>2</td>" in page and "<td>best epoch (0-based; its basis is kept)</td><td>1</td>" in page
    assert _numbers_in(page, fit.train_loss[0], fit.train_loss[-1], fit.val_loss[1], fit.lrs[0], fit.lrs[-1])
    assert "site='hook_hidden'" in repr(fit) and "tensor" not in repr(fit)
    bad = dataclasses.replace(fit, site="<b>site", train_loss=[])
    assert "&lt;b&gt;site" in bad._repr_html_() and "<b>" not in bad._repr_html_()
    by_hand = DASFit(basis=fit.basis)  # no site recorded, no history
    assert "<td>site</td><td>-</td>" in by_hand._repr_html_() and "<td>epochs run</td><td>0</td>" in by_hand._repr_html_()


def test_edit_handle_repr_html_says_what_was_edited_and_whether_reverted(tiny_model):
    from types import SimpleNamespace

    from workbench.intervene.edit import EditHandle, head_edit, neuron_edit

    v = torch.randn(tiny_model.facts.d_model, generator=torch.Generator().manual_seed(0))
    edits = [head_edit(1, 2, 0.7, 0.9, v, tiny_model.weight("W_O", 1).detach()[2]),
             neuron_edit(0, 5, -1.3, -0.8, v, tiny_model.weight("W_out", 0).detach()[5])]
    handle = EditHandle(tiny_model, edits)
    assert handle.state == "not applied" and "not applied" in handle._repr_html_()
    with handle:
        page = handle._repr_html_()
        assert "1 heads, 1 neurons" in page and ": applied</h4>" in page
        assert f"<td>head</td><td>1</td><td>2</td><td>W_O</td><td>{results.fmt(edits[0].lam)}</td>" in page
        assert f"<td>neuron</td><td>0</td><td>5</td><td>W_out</td><td>{results.fmt(edits[1].lam)}</td>" in page
    assert handle.state == "reverted" and ": reverted</h4>" in handle._repr_html_() and "reverted" in repr(handle)
    handle.apply()
    assert handle.state == "applied"
    handle.revert()
    named = EditHandle(SimpleNamespace(name="<b>model"), edits)
    assert "&lt;b&gt;model" in named._repr_html_() and "<b>" not in named._repr_html_()
