"""Static figure export (``Result.save_figures``, ``workbench report --figures``) through kaleido and Debian's
Chromium (``make test`` installs it). One browser start per call: the whole file takes about 15 s."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from workbench import run_analysis
from workbench.cli import app
from workbench.errors import ConfigError, FigureExportError

TEXTS = ["the first prompt is here", "a second prompt, a little longer than the first one"]


@pytest.fixture(scope="module")
def result(tiny_model):
    return run_analysis(tiny_model, "activation_spectra", texts=TEXTS)


def test_png_svg_pdf_of_a_real_figure(result, tmp_path):
    paths = result.save_figures(tmp_path / "figs", ("png", "svg", "pdf"), width=600, height=400, scale=2)
    n = len(result.figures())
    assert n >= 1 and len(paths) == 3 * n
    assert [p.name for p in paths[:3]] == ["activation_spectra_1.png", "activation_spectra_1.svg",
                                           "activation_spectra_1.pdf"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in paths)  # no temp left
    with Image.open(paths[0]) as png:
        assert png.format == "PNG" and png.size == (1200, 800)
        colours = png.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # lines, text, axes: not a blank white page
    white = max(count for count, colour in colours if colour == (255, 255, 255))
    assert white < 1200 * 800 * 0.99
    svg = paths[1].read_text()
    assert svg.lstrip().startswith(("<svg", "<?xml")) and "<text" in svg
    assert paths[2].read_bytes().startswith(b"%PDF")


def test_default_size_is_a_seven_inch_column_at_300_dpi(result, tmp_path):
    (path,) = result.save_figures(tmp_path, ["PNG"], height=300)[:1]
    with Image.open(path) as png:
        assert png.size == (2100, 900)


@pytest.mark.parametrize("formats", [("png", "gif"), ("eps",), ()])
def test_unknown_format_is_refused_and_nothing_written(result, tmp_path, formats):
    with pytest.raises(ConfigError, match="'formats'"):
        result.save_figures(tmp_path / "figs", formats)
    assert not (tmp_path / "figs").exists()


def test_no_chromium_names_what_to_install(result, tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chromium"))
    (tmp_path / "figs").mkdir()
    with pytest.raises(FigureExportError, match="apt-get install chromium.*BROWSER_PATH"):
        result.save_figures(tmp_path / "figs", ("png",))
    assert list((tmp_path / "figs").iterdir()) == []  # no partial file, no temporary folder


def test_cli_report_figures(tiny_model, tmp_path):
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["report", "--model", str(tiny_model.folder), "--analyses",
                                   "activation_spectra,weight_spectra", "--max-tokens", "40", "--out", str(out),
                                   "--figures", "png,svg"])
    assert run.exit_code == 0, run.output
    names = {p.name for p in (out / "figures").iterdir()}
    assert {"activation_spectra_1.png", "activation_spectra_1.svg", "weight_spectra_1.png"} <= names
    assert (out / "report.html").exists()


@pytest.mark.parametrize("args,message", [
    (["--out", "OUT", "--figures", "png,gif"], "'gif'"),
    (["--out", "OUT", "--figures", ","], "--figures"),
    (["--json", "-", "--figures", "png"], "--figures needs an output folder"),
])
def test_cli_bad_figures_exit_2_before_any_work(tiny_model, tmp_path, args, message):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    run = CliRunner().invoke(app, ["report", "--model", str(tiny_model.folder), *args])
    assert run.exit_code == 2 and "Traceback" not in run.output
    assert run.output.startswith("error:") and len(run.output.strip().splitlines()) == 1 and message in run.output
    assert not (tmp_path / "out").exists()
