"""One sweep cell on the tiny model: its folder (whole or absent), its record and metrics, failures recorded."""

from __future__ import annotations

import json

import pytest

from workbench.report import Report
from workbench.sweeps import Cell
from workbench.sweeps.cells import cell_folder, failed_record, read_cell, run_cell, write_cell


def make_cell(tiny_model, prompts, **fields) -> Cell:
    return Cell(model=str(tiny_model.folder), label="tiny", step=3, analysis=fields.pop("analysis", "activation_spectra"),
                prompts=str(prompts), batch_size=2, max_tokens=40, **fields)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("the cat sat on the mat\na second short prompt\n")
    return path


def test_done_cell_writes_record_and_report(tiny_model, prompts, tmp_path):
    cell = make_cell(tiny_model, prompts, config={"kinds": ["resid_post"], "n_values": 4})
    record = run_cell(cell, tiny_model, tmp_path / "out")
    folder = cell_folder(tmp_path / "out", cell.id)
    assert sorted(p.name for p in folder.iterdir()) == ["cell.json", "report.json"]
    assert read_cell(folder) == record
    assert {k: record[k] for k in ("id", "label", "step", "analysis", "prompts", "config", "status", "error")} == {
        "id": cell.id, "label": "tiny", "step": 3, "analysis": "activation_spectra", "prompts": str(prompts),
        "config": {"kinds": ["resid_post"], "n_values": 4}, "status": "done", "error": None}
    assert record["seconds"] > 0 and record["versions"]["torch"].startswith("2.") and record["finished"]
    sites = {(layer, site) for _, layer, site, _ in record["metrics"]}
    assert sites == {(0, "blocks.0.hook_resid_post"), (1, "blocks.1.hook_resid_post")}
    assert {m for m, *_ in record["metrics"]} >= {"erank (centred)", "RankMe (centred)", "tokens"}
    report = Report.load(folder)
    assert report.provenance["cell"]["id"] == cell.id and report.provenance["n_texts"] == 2
    result = report.results["activation_spectra"]
    assert result.n_tokens <= 40 and [list(m) for m in result.metrics()] == record["metrics"]


def test_weight_cell_without_prompts(tiny_model, tmp_path):
    cell = make_cell(tiny_model, "-", analysis="weight_spectra", config={"include_embeddings": False})
    record = run_cell(cell, tiny_model, tmp_path)
    assert record["status"] == "done" and record["prompts"] == "-"
    assert {site for _, _, site, _ in record["metrics"]} >= {"W_Q", "W_out"}
    assert None not in {layer for _, layer, _, _ in record["metrics"]}  # no W_E/W_U rows


def test_a_raising_analysis_is_recorded_not_raised(tiny_model, prompts, tmp_path):
    cell = make_cell(tiny_model, prompts, config={"sites": ["blocks.9.hook_resid_post"]})
    record = run_cell(cell, tiny_model, tmp_path)
    folder = cell_folder(tmp_path, cell.id)
    assert record["status"] == "failed" and record["error"].startswith("SiteError: ") and record["metrics"] == []
    assert sorted(p.name for p in folder.iterdir()) == ["cell.json", "error.txt"]
    assert "Traceback" in (folder / "error.txt").read_text() and read_cell(folder)["status"] == "failed"


def test_an_edited_prompt_file_fails_the_cell(tiny_model, prompts, tmp_path):
    cell = make_cell(tiny_model, prompts, prompts_sha="0" * 64)
    record = run_cell(cell, tiny_model, tmp_path)
    assert record["status"] == "failed" and "changed since the sweep spec was read" in record["error"]


def test_interrupts_propagate_and_write_nothing(tiny_model, prompts, tmp_path, monkeypatch):
    import workbench.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workbench.runner, "run_analyses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cell(make_cell(tiny_model, prompts), tiny_model, tmp_path)
    assert not (tmp_path / "cells").exists() or not any((tmp_path / "cells").iterdir())


def test_a_rewrite_replaces_the_folder_whole_or_not_at_all(tiny_model, prompts, tmp_path):
    cell = make_cell(tiny_model, prompts)
    write_cell(tmp_path, failed_record(cell, "RuntimeError: first"), error="trace")
    folder = cell_folder(tmp_path, cell.id)

    unwritable = failed_record(cell, "second") | {"extra": object()}  # json.dumps fails after error.txt is written
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_cell(tmp_path, unwritable, error="new trace")
    assert read_cell(folder)["error"] == "RuntimeError: first" and (folder / "error.txt").read_text() == "trace"
    assert [p.name for p in (tmp_path / "cells").iterdir()] == [cell.id]  # no temporary folder left
    record = run_cell(cell, tiny_model, tmp_path)  # a successful rerun replaces the failed folder
    assert record["status"] == "done" and not (folder / "error.txt").exists()


def test_read_cell_of_missing_or_damaged_records(tmp_path):
    assert read_cell(tmp_path / "absent") is None
    (tmp_path / "cell.json").write_text("{not json")
    assert read_cell(tmp_path) is None
    (tmp_path / "cell.json").write_text(json.dumps([1, 2]))
    assert read_cell(tmp_path) is None
