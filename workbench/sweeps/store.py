"""The sweep's results database: DuckDB at ``DIR/results.duckdb``, two tables a user can query with SQL or pandas.

``cells`` has one row per cell (its definition, status, error, seconds, versions); ``metrics`` is long, one row per
(cell, metric, layer, site). The database is an index of the cell folders (``DIR/cells/<id>/cell.json``, the source
of truth): :func:`reindex` rebuilds it from them, and :func:`open_store` does so by itself when the file is missing
or damaged. Only the sweep's driver writes it. Every operation opens and closes its own connection, so a reader (the
dashboard) can open the file between two writes; DuckDB holds a file lock while a connection is open, and a
connection that meets it retries for a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.sweeps.cells import CELLS, read_cell

if TYPE_CHECKING:
    import pandas

__all__ = ["DB_NAME", "SCHEMA", "ResultsStore", "open_store", "read_records", "reindex"]

log = logging.getLogger(__name__)

DB_NAME = "results.duckdb"
SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (id VARCHAR PRIMARY KEY, model VARCHAR, label VARCHAR, step BIGINT,
    analysis VARCHAR, prompts VARCHAR, config JSON, status VARCHAR, error VARCHAR, seconds DOUBLE, versions JSON,
    finished TIMESTAMP);
CREATE TABLE IF NOT EXISTS metrics (cell VARCHAR, analysis VARCHAR, metric VARCHAR, layer INTEGER, site VARCHAR,
    value DOUBLE);
"""
CELL_COLUMNS = ("id", "model", "label", "step", "analysis", "prompts", "config", "status", "error", "seconds",
                "versions", "finished")
METRIC_COLUMNS = ("cell", "analysis", "metric", "layer", "site", "value")
LOCK_WAIT_S = 10.0


class ResultsStore:
    """The database at ``path``. Writes (:meth:`upsert`) replace a cell's rows in one transaction, so a cell written
    twice is still one row in ``cells`` and one set of rows in ``metrics``.

    Example: ``store = ResultsStore("sweeps/readme/results.duckdb", read_only=True); store.cells()``"""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A DuckDB connection to the file (schema created on a writable one), closed on exit. Another process
        holding the file's lock is waited for up to ``LOCK_WAIT_S``.

        Example: ``with store.connect() as con: con.execute("SELECT count(*) FROM cells").fetchone()``"""
        import duckdb

        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            if not self.read_only:
                con.execute(SCHEMA)
            yield con
        finally:
            con.close()

    def upsert(self, record: dict[str, Any]) -> None:
        """Insert or replace one cell record (as ``cell.json`` holds it) and its metrics.

        Example: ``store.upsert(read_cell(Path("sweeps/readme/cells") / cell_id))``"""
        self.upsert_many([record])

    def upsert_many(self, records: Iterable[dict[str, Any]]) -> int:
        """Insert or replace several records in one transaction (of one id given twice, the last); returns how
        many cells were written.

        Example: ``ResultsStore("sweeps/readme/results.duckdb").upsert_many(read_records(Path("sweeps/readme")))``"""
        records = list({r["id"]: r for r in records}.values())
        if not records:
            return 0
        cells, metrics = _frames(records)
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                con.register("new_cells", cells)
                con.register("new_metrics", metrics)
                con.execute("DELETE FROM metrics WHERE cell IN (SELECT id FROM new_cells)")
                con.execute("DELETE FROM cells WHERE id IN (SELECT id FROM new_cells)")
                con.execute(f"INSERT INTO cells SELECT {_casts(CELL_TYPES)} FROM new_cells")
                con.execute(f"INSERT INTO metrics SELECT {_casts(METRIC_TYPES)} FROM new_metrics")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return len(records)

    def ids(self, status: str | None = None) -> set[str]:
        """Ids of the cells in the database (with that ``status``: ``"done"`` or ``"failed"``).

        Example: ``store.ids("failed")``"""
        where, params = ("WHERE status = ?", [status]) if status is not None else ("", [])
        with self.connect() as con:
            return {row[0] for row in con.execute(f"SELECT id FROM cells {where}", params).fetchall()}

    def cells(self) -> pandas.DataFrame:
        """The ``cells`` table, ordered by analysis, label, step and prompts.

        Example: ``open_store("sweeps/readme").cells()``"""
        return self.query("SELECT * FROM cells ORDER BY analysis, label, step, prompts, id")

    def metrics(self, analysis: str | None = None, metric: str | None = None) -> pandas.DataFrame:
        """The ``metrics`` table, optionally of one analysis and/or one metric.

        Example: ``store.metrics("activation_spectra", "erank (centred)")``"""
        clauses = [(c, v) for c, v in (("analysis = ?", analysis), ("metric = ?", metric)) if v is not None]
        where = ("WHERE " + " AND ".join(c for c, _ in clauses)) if clauses else ""
        return self.query(f"SELECT * FROM metrics {where} ORDER BY cell, metric, layer, site", [v for _, v in clauses])

    def query(self, sql: str, params: Iterable[Any] = ()) -> pandas.DataFrame:
        """Any SQL on the two tables, as a pandas DataFrame.

        Example: ``store.query("SELECT * FROM metrics WHERE layer = ?", [0])``"""
        with self.connect() as con:
            return con.execute(sql, list(params)).df()

    def check(self) -> None:
        """Raise ``duckdb.Error`` unless both tables have the expected columns and every value can be read (a
        damaged block fails its checksum here; a full scan of two narrow tables takes milliseconds per million
        rows).

        Example: ``open_store("sweeps/readme").check()  # None when the database is sound``"""
        with self.connect() as con:
            for table, columns in (("cells", CELL_COLUMNS), ("metrics", METRIC_COLUMNS)):
                found = tuple(r[0] for r in con.execute(f"DESCRIBE {table}").fetchall())
                if found != columns:
                    import duckdb

                    raise duckdb.CatalogException(f"table {table} has columns {found}, expected {columns}")
                con.execute(f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {table}").fetchall()


def read_records(out: Path) -> Iterator[dict[str, Any]]:
    """Every readable ``cell.json`` under ``out/cells/`` (temporary and damaged folders skipped), by folder name.

    Example: ``[r["id"] for r in read_records(Path("sweeps/readme"))]``"""
    root = Path(out) / CELLS
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith(".") and (record := read_cell(folder)) is not None:
            yield record


def reindex(out: str | Path) -> int:
    """Rebuild ``out/results.duckdb`` from the cell folders: built into a temporary file, then renamed over the old
    one (a reader sees the old or the new database, never half of one). Returns the number of cells indexed.

    Example: ``reindex("sweeps/readme")  # the number of cells indexed``"""
    out = Path(out)
    target = out / DB_NAME
    tmp = out / f".{DB_NAME}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        count = ResultsStore(tmp).upsert_many(read_records(out))
        with ResultsStore(tmp).connect() as con:
            con.execute("CHECKPOINT")  # everything in the file itself, no write-ahead log left beside it
        _remove(target.with_name(target.name + ".wal"))  # a stale log would be replayed onto the new file
        os.replace(tmp, target)
    finally:
        _remove(tmp)
    log.info("reindexed %d cells into %s", count, target)
    return count


def open_store(out: str | Path) -> ResultsStore:
    """The sweep's store, rebuilt from the cell folders first when the file is missing or damaged (logged).

    Example: ``open_store("sweeps/readme").query("SELECT metric, count(*) FROM metrics GROUP BY metric")``"""
    import duckdb

    out = Path(out)
    store = ResultsStore(out / DB_NAME)
    if not store.path.exists():
        reindex(out)
        return store
    try:
        store.check()
    except duckdb.Error as exc:
        if isinstance(exc, duckdb.IOException) and _is_lock_error(exc):
            raise  # another process is writing it: not damage
        log.warning("%s is damaged (%s: %s); rebuilding it from %s", store.path, type(exc).__name__, exc,
                    out / CELLS)
        reindex(out)
    return store


# --- records to typed frames -----------------------------------------------------------------------------------------

CELL_TYPES = {"id": "VARCHAR", "model": "VARCHAR", "label": "VARCHAR", "step": "BIGINT", "analysis": "VARCHAR",
              "prompts": "VARCHAR", "config": "JSON", "status": "VARCHAR", "error": "VARCHAR", "seconds": "DOUBLE",
              "versions": "JSON", "finished": "TIMESTAMP"}
METRIC_TYPES = {"cell": "VARCHAR", "analysis": "VARCHAR", "metric": "VARCHAR", "layer": "INTEGER", "site": "VARCHAR",
                "value": "DOUBLE"}


def _casts(types: dict[str, str]) -> str:
    return ", ".join(f'CAST("{name}" AS {kind})' for name, kind in types.items())


def _frames(records: list[dict[str, Any]]) -> tuple[pandas.DataFrame, pandas.DataFrame]:
    """The records as two DataFrames of the tables' columns (objects; DuckDB casts them on insert)."""
    import pandas

    cells, metrics = [], []
    for r in records:
        cells.append([r["id"], r.get("model"), r.get("label"), r.get("step"), r.get("analysis"), r.get("prompts"),
                      json.dumps(r.get("config", {}), sort_keys=True), r.get("status"), r.get("error"),
                      r.get("seconds"), json.dumps(r.get("versions", {}), sort_keys=True), _time(r.get("finished"))])
        metrics += [[r["id"], r.get("analysis"), m[0], m[1], m[2], m[3]] for m in r.get("metrics") or ()]
    frame = {name: pandas.Series([row[i] for row in cells], dtype=object) for i, name in enumerate(CELL_COLUMNS)}
    long = {name: pandas.Series([row[i] for row in metrics], dtype=object) for i, name in enumerate(METRIC_COLUMNS)}
    long["value"] = pandas.Series([None if row[5] is None else float(row[5]) for row in metrics], dtype="float64")
    return pandas.DataFrame(frame), pandas.DataFrame(long)


def _time(text: Any) -> datetime | None:
    """An ISO time (with or without offset) as naive UTC, DuckDB's TIMESTAMP."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _is_lock_error(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
