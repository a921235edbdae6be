"""Notebook HTML (issue 19): plotly.js inlined once per session, ``Result.to_pandas()``, ``Report._repr_html_``."""

from __future__ import annotations

import math
import numbers
import re

import pandas as pd
import pytest
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
