"""``workbench report``: fast runs on the tiny model's folder, and the end-to-end run on the real bundled model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from workbench import registry
from workbench.cli import app
from workbench.report import Report

runner = CliRunner()


def _report(*args: str):
    return runner.invoke(app, ["report", *args])


def test_report_on_a_local_folder(tiny_model, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt here\nsecond prompt, longer than the first\n")
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--prompts", str(prompts), "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    assert data["provenance"]["n_texts"] == 2 and data["provenance"]["model"] == str(tiny_model.folder)
    assert set(data["results"]) == set(registry.names(default_only=True))  # the spectral analyses by default
    assert "subspace_patching" not in data["results"]
    assert data["provenance"]["versions"]["torch"].startswith("2.")


def test_sites_and_analyses_options(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--sites", "blocks.*.hook_resid_post",
                     "--analyses", "activation_spectra", "--max-tokens", "40", "--out", str(out))
    assert result.exit_code == 0, result.output
    res = Report.load(out).results["activation_spectra"]
    assert res.site == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"] and res.n_tokens <= 40


@pytest.mark.parametrize("args,message", [
    (["--analyses", "nope"], "'name'"),
    (["--sites", "blocks.*.hook_nothing"], "matches no hook"),
    (["--model", "no-such-model"], "unknown model"),
])
def test_bad_input_exits_2_with_one_line(tiny_model, tmp_path, args, message):
    if "--model" not in args:
        args = ["--model", str(tiny_model.folder), *args]
    result = _report(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_config_file_sets_analysis_fields(tiny_model, tmp_path):
    sets = tmp_path / "sets.txt"
    sets.write_text("one prompt\nanother prompt\nand a third\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"rankme": {"prompt_sets": {"mine": str(sets), "code": "bundled:code"},
                                             "poolings": ["last"]}}))
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--analyses", "rankme", "--config", str(config),
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    assert report.results["rankme"].set_sizes == {"mine": 3, "code": 3}
    assert set(report.results["rankme"].pooling) == {"last"}
    assert report.provenance["config"]["rankme"]["poolings"] == ["last"]


@pytest.mark.parametrize("content,message", [
    ("{not json", "cannot read a JSON object"),
    ('{"rankme": 3}', "analysis name"),
    ('{"weight_spectra": {}}', "not among the analyses run"),
    ('{"rankme": {"no_field": 1}}', "only the keys"),
    ('{"rankme": {"eps": -1}}', "'eps'"),
])
def test_bad_config_file_exits_2(tiny_model, tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(content)
    result = _report("--model", str(tiny_model.folder), "--analyses", "rankme", "--config", str(config),
                     "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_refuses_existing_out(tiny_model, tmp_path):
    (tmp_path / "out").mkdir()
    result = _report("--model", str(tiny_model.folder), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--overwrite" in result.output


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the default report, ~3 min quiet; it exceeded 900 s only on a 5x-loaded machine
def test_end_to_end_on_the_bundled_model(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "workbench", "report", "--max-tokens", "400", "--analyses",
                           "activation_spectra,weight_spectra", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    report = Report.from_dict(data)
    assert report.to_dict() == data
    n_figures = sum(len(r.figures()) for r in report.results.values())
    assert n_figures >= 4 and page.count('class="plotly-graph-div"') == n_figures and "Weight spectra" in page
    prov = data["provenance"]
    assert prov["model"] == "smollm2-135m" and prov["n_tokens"] == 400 and len(prov["sites"]) == 90
    assert prov["model_licence"] == "Apache-2.0."
    act = data["results"]["activation_spectra"]
    assert all(1 < e < 576 for e in act["erank_centred"])
    assert len(data["results"]["weight_spectra"]["matrix"]) == 30 * 7 + 2


def test_dashboard_command_runs_the_installed_app(monkeypatch):
    """``workbench dashboard`` starts streamlit on the installed workbench_app's Home.py with the chosen model."""
    import importlib.util
    from pathlib import Path

    seen = {}

    def fake_run(command, env):
        seen.update(command=command, model=env["WORKBENCH_APP_MODEL"])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    result = runner.invoke(app, ["dashboard", "--model", "gemma3-270m", "--port", "8600"])
    assert result.exit_code == 0, result.output
    home = Path(importlib.util.find_spec("workbench_app").origin).parent / "Home.py"
    assert home.is_file() and seen["command"][1:4] == ["-m", "streamlit", "run"] and seen["command"][4] == str(home)
    assert seen["model"] == "gemma3-270m" and seen["command"][seen["command"].index("--server.port") + 1] == "8600"


def test_seconds_per_step_in_the_provenance_and_the_last_lines(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--analyses", "activation_spectra,weight_spectra",
                     "--max-tokens", "40", "--out", str(out))
    assert result.exit_code == 0, result.output
    seconds = json.loads((out / "report.json").read_text())["provenance"]["seconds"]
    assert list(seconds) == ["load", "capture", "weights", "activation_spectra", "weight_spectra"]
    assert all(s >= 0 for s in seconds.values())
    assert "seconds: load " in result.output and "activation_spectra" in result.output.split("seconds: ")[-1]
    assert "seconds" in (out / "report.html").read_text()
