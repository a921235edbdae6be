"""Report: JSON round-trip, self-contained HTML, refusal to overwrite, atomic writes."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.report import Report
from workbench.runner import run_analyses

TEXTS = ["A first little text.", "And a second one, slightly longer than the first."]


@pytest.fixture(scope="module")
def report(tiny_model):
    results = run_analyses(tiny_model, ["activation_spectra", "weight_spectra"], texts=TEXTS)
    return Report(results=results, provenance={"model": tiny_model.name, "seed": 0})


def test_writes_json_that_round_trips_and_offline_html(report, tmp_path):
    out = report.write(tmp_path / "r")
    data = json.loads((out / "report.json").read_text())
    assert Report.load(out).to_dict() == data == report.to_dict()
    page = (out / "report.html").read_text()
    assert page.count("<script type='text/javascript'>") == 1  # plotly.js inlined once
    assert page.count('class="plotly-graph-div"') == sum(len(r.figures()) for r in report.results.values())
    assert "cdn.plot.ly/plotly" not in page.split("</script>", 1)[1]  # figures never load plotly from a CDN
    assert "Provenance" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_refuses_existing_folder_without_overwrite(report, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="'out'"):
        report.write(out)
    assert (out / "keep.txt").read_text() == "mine"
    report.write(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_a_config_error_inside_the_write_is_not_called_an_existing_out(report, tmp_path, monkeypatch):
    def refuse(self):
        raise ConfigError("to_html(): parameter 'x' must be fine; received 'bad'")

    monkeypatch.setattr(Report, "to_html", refuse)
    for out, overwrite in ((tmp_path / "new", False), (tmp_path / "new", True)):
        with pytest.raises(ConfigError, match="parameter 'x' must be fine"):
            report.write(out, overwrite=overwrite)
        assert list(tmp_path.iterdir()) == []


def test_failure_mid_write_leaves_nothing(report, tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Report, "to_html", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        report.write(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []
