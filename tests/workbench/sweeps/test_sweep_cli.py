"""``workbench sweep``: refusals exit 2 with one ``error:`` line before any work, and ``--reindex DIR`` (no Ray here;
the runs on Ray are in test_execute.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.workbench.sweeps.test_store import record
from workbench.cli import app
from workbench.sweeps import ResultsStore
from workbench.sweeps.cells import write_cell
from workbench.sweeps.store import DB_NAME

runner = CliRunner()


@pytest.fixture
def spec_file(tmp_path):
    (tmp_path / "model").mkdir()
    path = tmp_path / "s.toml"
    path.write_text('analyses = ["weight_spectra"]\n[[models]]\nsource = "model"\n')
    return path


@pytest.mark.parametrize("text,message", [
    ('analyses = ["nope"]\n[[models]]\nsource = "model"\n', "'analyses[0]' must be one of"),
    ('analyses = ["weight_spectra"]\n[[models]]\nsource = "gone"\n', "'models[0].source' must be a bundled name"),
    ('analyses = ["weight_spectra"]\n[[models]]\nsource = "model"\n[grid.weight_spectra]\nper_head = []\n',
     "'grid.weight_spectra.per_head' is an empty list"),
    ('analyses = ["weight_spectra"\n', "not valid TOML"),
])
def test_a_bad_spec_exits_2_with_one_error_line_and_no_folder(spec_file, text, message):
    spec_file.write_text(text)
    out = spec_file.parent / "out"
    result = runner.invoke(app, ["sweep", str(spec_file), "--out", str(out)])
    assert result.exit_code == 2 and f"error: sweep spec {spec_file}: " in result.output and message in result.output
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--max-parallel", "0"], "'max_parallel' must be None or an int >= 1"),
    (["--device", "warp-drive"], "'device' must be a torch device"),
])
def test_bad_options_exit_2_before_any_work(spec_file, args, message):
    out = spec_file.parent / "out"
    result = runner.invoke(app, ["sweep", str(spec_file), "--out", str(out), *args])
    assert result.exit_code == 2 and message in result.output and not out.exists()


def test_spec_and_out_are_required(spec_file):
    result = runner.invoke(app, ["sweep", str(spec_file)])
    assert result.exit_code == 2 and "needs SPEC and --out DIR" in result.output


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_reindex_rebuilds_the_database_from_the_cell_folders(tmp_path, damage):
    recs = [record(0), record(1), record(2, status="failed")]
    for rec in recs:
        write_cell(tmp_path, rec)
    ResultsStore(tmp_path / DB_NAME).upsert_many(recs)
    if damage == "deleted":
        (tmp_path / DB_NAME).unlink()
    else:
        (tmp_path / DB_NAME).write_bytes(b"not a database")
    result = runner.invoke(app, ["sweep", "--reindex", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"reindexed 3 cells into {tmp_path / DB_NAME}" in result.output
    store = ResultsStore(tmp_path / DB_NAME, read_only=True)
    assert store.ids() == {r["id"] for r in recs} and store.ids("failed") == {recs[2]["id"]}
    assert len(store.metrics()) == 8


def test_reindex_refuses_a_folder_that_is_not_a_sweep(tmp_path, spec_file):
    result = runner.invoke(app, ["sweep", "--reindex", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "not a sweep folder" in result.output
    result = runner.invoke(app, ["sweep", str(spec_file), "--reindex", str(tmp_path)])
    assert result.exit_code == 2 and "takes no SPEC and no --out" in result.output
