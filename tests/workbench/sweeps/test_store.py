"""The DuckDB results store: upserts without duplicates, queries, and rebuilding from the cell folders."""

from __future__ import annotations

import math
import os

import pytest

from workbench.sweeps import Cell, ResultsStore, open_store, reindex
from workbench.sweeps.cells import failed_record, write_cell
from workbench.sweeps.store import DB_NAME


def record(i: int, *, status="done", analysis="weight_spectra", metrics=None) -> dict:
    cell = Cell(model=f"/models/m{i}", label=f"m{i}", step=10 * i, analysis=analysis, prompts="-",
                config={"per_head": bool(i % 2)})
    rec = failed_record(cell, "RuntimeError: boom") if status == "failed" else failed_record(cell, "") | {
        "status": "done", "error": None, "seconds": 1.25 + i}
    rec["metrics"] = [] if status == "failed" else (metrics if metrics is not None else [
        ["erank", 0, "W_Q", 1.5 + i], ["erank", 1, "W_Q.h2", 2.5], ["alpha", None, "W_E", float("nan")],
        ["σ_max", 1, "W_out", float("inf")]])
    return rec


@pytest.fixture
def swept(tmp_path):
    """A sweep folder holding three cell folders (two done, one failed) and no database yet."""
    recs = [record(0), record(1), record(2, status="failed")]
    for rec in recs:
        write_cell(tmp_path, rec)
    return tmp_path, recs


def rows(store: ResultsStore):
    cells = store.query("SELECT * FROM cells ORDER BY id").to_dict("records")
    metrics = store.query("SELECT * FROM metrics ORDER BY cell, metric, site").to_dict("records")
    return _comparable(cells), _comparable(metrics)


def _comparable(records):  # NaN != NaN: compare it as a string
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]


def test_upsert_twice_keeps_one_row_per_cell_and_replaces_metrics(tmp_path):
    store = ResultsStore(tmp_path / DB_NAME)
    store.upsert(record(0))
    store.upsert(record(0))
    store.upsert(record(0, metrics=[["erank", 0, "W_Q", 9.0]]))
    assert len(store.cells()) == 1 and store.metrics()[["metric", "value"]].values.tolist() == [["erank", 9.0]]
    store.upsert_many([record(1), record(2, status="failed"), record(1)])
    assert store.ids() == {record(i)["id"] for i in range(3)}
    assert store.ids("failed") == {record(2)["id"]} and len(store.ids("done")) == 2


def test_tables_types_and_queries(tmp_path):
    store = ResultsStore(tmp_path / DB_NAME)
    store.upsert_many([record(0), record(1), record(2, status="failed")])
    cells = store.cells().set_index("id")
    one = cells.loc[record(1)["id"]]
    assert (one.label, one.step, one.analysis, one.prompts, one.status, one.seconds) == ("m1", 10, "weight_spectra",
                                                                                        "-", "done", 2.25)
    assert cells.loc[record(2)["id"]].error == "RuntimeError: boom"
    assert str(store.query("SELECT typeof(finished) AS t FROM cells LIMIT 1").t[0]) == "TIMESTAMP"
    # the README's example queries: a metric per layer and step, and a JSON field of the config
    per_step = store.query("SELECT c.step, m.layer, avg(m.value) AS erank FROM metrics m JOIN cells c ON c.id = m.cell "
                           "WHERE m.metric = 'erank' AND m.site = 'W_Q' GROUP BY ALL ORDER BY c.step")
    assert per_step.values.tolist() == [[0, 0, 1.5], [10, 0, 2.5]]
    heads = store.query("SELECT label FROM cells WHERE config->>'per_head' = 'true'")
    assert heads.label.tolist() == ["m1"]
    metrics = store.metrics(analysis="weight_spectra", metric="σ_max")
    assert len(metrics) == 2 and math.isinf(metrics.value[0]) and metrics.layer.tolist() == [1, 1]
    assert math.isnan(store.metrics(metric="alpha").value[0]) and store.metrics(metric="alpha").layer.isna().all()
    assert store.metrics(analysis="activation_spectra").empty


def test_reindex_after_deleting_the_database_rebuilds_the_same_rows(swept):
    out, recs = swept
    store = ResultsStore(out / DB_NAME)
    store.upsert_many(recs)
    before = rows(store)
    (out / DB_NAME).unlink()
    assert reindex(out) == 3
    assert rows(store) == before
    (out / DB_NAME).unlink()
    assert rows(open_store(out)) == before  # open_store rebuilds a missing file by itself


def test_a_damaged_database_is_rebuilt(swept, caplog):
    out, recs = swept
    store = ResultsStore(out / DB_NAME)
    store.upsert_many(recs)
    before = rows(store)
    (out / DB_NAME).write_bytes(os.urandom(4096) + b"garbage" * 100)
    with caplog.at_level("WARNING"):
        assert rows(open_store(out)) == before
    assert "damaged" in caplog.text and "rebuilding" in caplog.text
    (out / DB_NAME).write_bytes(b"")  # an empty file too
    assert rows(open_store(out)) == before
    data = bytearray((out / DB_NAME).read_bytes())  # a valid header over damaged blocks: caught by the full scan
    data[4096:] = os.urandom(len(data) - 4096)
    (out / DB_NAME).write_bytes(bytes(data))
    assert rows(open_store(out)) == before


def test_reindex_skips_temporary_and_unreadable_folders(swept):
    out, recs = swept
    (out / "cells" / ".abc.tmp-1").mkdir()
    (out / "cells" / "broken").mkdir()
    (out / "cells" / "broken" / "cell.json").write_text("{half")
    (out / f".{DB_NAME}.tmp-999").write_bytes(b"junk")
    assert reindex(out) == 3
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [f".{DB_NAME}.tmp-999", DB_NAME]


def test_reindex_of_a_folder_without_cells_is_empty(tmp_path):
    assert reindex(tmp_path) == 0
    assert ResultsStore(tmp_path / DB_NAME, read_only=True).cells().empty


def test_read_only_store_and_a_held_lock(swept):
    out, recs = swept
    reindex(out)
    reader = ResultsStore(out / DB_NAME, read_only=True)
    assert len(reader.cells()) == 3
    with pytest.raises(Exception, match="read-only|read only"):
        reader.upsert(recs[0])
