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


@pytest.mark.parametrize("name,content,message", [
    ("config.json", "{not json", "cannot read a JSON object"),
    ("config.json", '{"rankme": 3}', "analysis name"),
    ("config.json", '{"weight_spectra": {}}', "not among the analyses run"),
    ("config.json", '{"rankme": {"no_field": 1}}', "only the keys"),
    ("config.json", '{"rankme": {"eps": -1}}', "'eps'"),
    ("bad.toml", "[rankme\n", "cannot read a TOML document"),
    ("bad.toml", "rankme = 3\n", "table of config fields"),
    ("bad.toml", "[rankme]\neps = -1\n", "'eps'"),
])
def test_bad_config_file_exits_2_naming_the_file(tiny_model, tmp_path, name, content, message):
    config = tmp_path / name
    config.write_text(content)
    result = _report("--model", str(tiny_model.folder), "--analyses", "rankme", "--config", str(config),
                     "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "error: " in result.stderr
    assert str(config) in result.stderr  # the file is named, whether it failed to parse or held a bad field
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


# issue 19 point 3: analyses, app, --version, --json -, TOML configs, exit codes

BUILT_INS = {"activation_spectra", "erank_dynamics", "gradient_spectra", "language_neurons", "rankme", "steer2edit",
             "subspace_patching", "token_maps", "weight_spectra"}


def test_analyses_lists_the_built_ins_with_their_defaults():
    result = runner.invoke(app, ["analyses"])
    assert result.exit_code == 0, result.output
    assert all(f"{name}  (" in result.stdout for name in BUILT_INS)
    assert "weight_spectra  (default report)" in result.stdout and "token_maps  (by name only)" in result.stdout
    assert "    n_values = 64" in result.stdout and '    esd_matrix = "W_out"' in result.stdout


def test_analyses_json_is_the_registry():
    result = runner.invoke(app, ["analyses", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert BUILT_INS <= set(rows)
    assert {n for n in BUILT_INS if rows[n]["in_default_report"]} == set(registry.names(default_only=True)) & BUILT_INS
    assert rows["activation_spectra"]["config"] == {"kinds": ["resid_post", "attn_out", "mlp_out"], "sites": None,
                                                    "rankme_eps": 1e-07, "n_values": 64}
    assert rows["rankme"]["description"] == registry.get("rankme").description
    assert rows["steer2edit"]["config"]["alphas"][0] == 0.05 and rows["steer2edit"]["in_default_report"] is False


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"workbench {version('spectral-workbench')}\n"


def test_app_is_the_dashboard_command(monkeypatch):
    """``workbench app`` is the same command as ``dashboard`` (its alias): same options, same streamlit line."""
    help_ = runner.invoke(app, ["app", "--help"])
    assert help_.exit_code == 0 and all(o in help_.stdout for o in ("--host", "--port", "--model", "127.0.0.1"))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, env: commands.append(command)
                        or subprocess.CompletedProcess(command, 0))
    for verb in ("app", "dashboard"):
        result = runner.invoke(app, [verb, "--host", "0.0.0.0", "--port", "8700"])
        assert result.exit_code == 0, result.output
    assert commands[0] == commands[1]
    assert commands[0][commands[0].index("--server.address") + 1] == "0.0.0.0"
    assert commands[0][commands[0].index("--server.port") + 1] == "8700"


def test_report_json_to_stdout_writes_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _report("--model", str(tiny_model.folder), "--analyses", "activation_spectra", "--max-tokens", "40",
                     "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # stdout is the JSON alone; the messages went to stderr
    assert set(data["results"]) == {"activation_spectra"} and "seconds: " in result.stderr
    assert Report.from_dict(data).to_dict() == data
    assert list(tmp_path.iterdir()) == []  # no reports/latest without an explicit --out


def test_report_json_to_stdout_and_an_explicit_out(tiny_model, tmp_path):
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--analyses", "weight_spectra", "--json", "-",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((out / "report.json").read_text())


def test_report_json_refuses_a_path(tiny_model, tmp_path):
    result = _report("--model", str(tiny_model.folder), "--json", str(tmp_path / "r.json"))
    assert result.exit_code == 2 and "error: --json takes only '-'" in result.stderr
    assert result.stdout == ""


def test_toml_config_is_accepted(tiny_model, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[rankme]\nprompt_sets = { code = "bundled:code", maths = "bundled:maths" }\n'
                      'poolings = ["last"]\n')
    out = tmp_path / "out"
    result = _report("--model", str(tiny_model.folder), "--analyses", "rankme", "--config", str(config),
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    report = Report.load(out)
    assert set(report.results["rankme"].set_sizes) == {"code", "maths"}  # the TOML's sets replace the defaults
    assert set(report.results["rankme"].pooling) == {"last"}
    assert report.provenance["config"]["rankme"]["poolings"] == ["last"]




def test_unexpected_error_exits_1_with_one_line(monkeypatch, capsys):
    from workbench import cli

    def broken(**_):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(registry, "names", broken)
    monkeypatch.setattr(sys, "argv", ["workbench", "analyses"])
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: unexpected RuntimeError: disk on fire (set WORKBENCH_DEBUG=1 for the traceback)"
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main()


def test_usage_errors_exit_2():
    result = runner.invoke(app, ["report", "--no-such-option"])
    assert result.exit_code == 2
