"""The Sweeps page under Streamlit's AppTest on a synthetic sweep folder: the figures show the database's numbers, the
failed cell's error is listed, a sweep without steps draws no step figure, a folder without a sweep says so, and the
page never writes into the sweep."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.workbench.sweeps.synthetic import ERROR, LAYERS, STEPS, make_sweep, records, value, write_cell_folders

PAGE = Path(__file__).resolve().parents[2] / "app" / "pages" / "10_Sweeps.py"


def page(folder: Path) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.run()
    at.text_input(key="folder").set_value(str(folder)).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def charts(at: AppTest) -> list[list[dict]]:
    """Each plotly chart's traces, with numeric arrays decoded (plotly sends them base64-encoded)."""
    out = []
    for chart in at.get("plotly_chart"):
        traces = json.loads(chart.proto.spec)["data"]
        for t in traces:
            for axis in ("x", "y"):
                if isinstance(t.get(axis), dict):
                    t[axis] = np.frombuffer(base64.b64decode(t[axis]["bdata"]), dtype=t[axis]["dtype"]).tolist()
        out.append(traces)
    return out


def test_page_plots_a_sweep_from_its_database(tmp_path):
    make_sweep(tmp_path / "sweeps" / "run1")
    at = page(tmp_path / "sweeps")  # a folder of sweeps: the sweep is listed and opened
    assert at.selectbox(key="sweep").value == str(tmp_path / "sweeps" / "run1")
    assert "8 cells: 7 done, 1 failed" in at.caption[0].value
    at.selectbox(key="analysis").set_value("activation_spectra").run()
    at.selectbox(key="metric").set_value("erank (centred)").run()
    by_layer, by_step = charts(at)
    shown = {t["name"]: t["y"] for t in by_layer if t.get("visible", True) is True}
    expected = {f"step-{s}": [value(s, layer, "hook_resid_post", "erank (centred)") for layer in LAYERS]
                for s in STEPS} | {"SmolLM2": [value(None, layer, "hook_resid_post", "erank (centred)")
                                              for layer in LAYERS]}
    assert shown == expected
    assert [t["x"] for t in by_step if t.get("visible", True) is True] == [sorted(STEPS)]
    at.selectbox(key="analysis").set_value("weight_spectra").run()
    assert any(ERROR in str(v) for v in at.dataframe[0].value["error"])
    assert any("1 of 8 cells failed" in e.value for e in at.error)


def test_page_without_steps_draws_no_step_figure_and_never_writes(tmp_path):
    recs = [r for r in records(tmp_path) if r["step"] is None and r["status"] == "done"]
    write_cell_folders(tmp_path / "sw", recs)  # no database: the page reads the cell folders and creates nothing
    at = page(tmp_path / "sw")
    assert len(charts(at)) == 1
    assert any("No checkpoint steps" in c.value for c in at.caption)
    assert not (tmp_path / "sw" / "results.duckdb").exists()


def test_page_says_when_the_folder_holds_no_sweep(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        at = page(folder)
        assert not at.get("plotly_chart")
        assert any("No sweep in" in i.value for i in at.info), [i.value for i in at.info]
