"""One sweep cell: run it on a loaded model and write ``DIR/cells/<id>/`` whole or not at all.

The folder is the source of truth of a sweep: ``cell.json`` (the record: definition, status, error, seconds,
versions, metrics) and, for a finished cell, ``report.json`` (the analysis' full result with provenance); a failed
cell has ``error.txt`` (the traceback) instead. The results database is rebuilt from these records.
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.atomic import replace_folder
from workbench.sweeps.spec import Cell, prompt_texts

if TYPE_CHECKING:
    from workbench.models import LoadedModel

__all__ = ["CELLS", "cell_folder", "failed_record", "read_cell", "run_cell", "write_cell"]

CELLS = "cells"  # DIR/cells/<id>/


def cell_folder(out: Path, cell_id: str) -> Path:
    """The folder of one cell's outputs: ``out/cells/<cell_id>/``.

    Example: ``read_cell(cell_folder(Path("sweeps/ckpts"), cell.id))``"""
    return Path(out) / CELLS / cell_id


def run_cell(cell: Cell, lm: LoadedModel, out: Path, *, progress: bool = False) -> dict[str, Any]:
    """Run ``cell`` on ``lm`` (the cell's model, already loaded) and write its folder; return the record.

    An exception inside the analysis (or reading its prompts) does not propagate: the cell is recorded ``failed``
    with ``"TypeName: message"`` and the traceback in ``error.txt``. KeyboardInterrupt and SystemExit do propagate
    (nothing is written).

    Example: ``run_cell(spec.cells[0], load_model(spec.cells[0].model), Path("sweeps/ckpts"))["status"]``"""
    import torch

    from workbench import registry
    from workbench.report import Report
    from workbench.runner import run_analyses

    started = time.perf_counter()
    try:
        texts = prompt_texts(cell.prompts)
        _check_prompt_file(cell)
        config = registry.get(cell.analysis).config.from_dict(cell.config) if cell.config else None
        torch.manual_seed(cell.seed)
        timings: dict[str, float] = {}
        result = run_analyses(lm, {cell.analysis: config}, texts=texts, batch_size=cell.batch_size,
                              max_tokens=cell.max_tokens, progress=progress, timings=timings)[cell.analysis]
        metrics = [list(m) for m in result.metrics()]
    except Exception as exc:  # noqa: BLE001 - any failure of the analysis is the cell's result, not the sweep's
        return write_cell(out, failed_record(cell, exc, time.perf_counter() - started), error=traceback.format_exc())
    seconds = time.perf_counter() - started
    record = _record(cell, "done", None, seconds, metrics)
    provenance = {"cell": cell.to_dict() | {"id": cell.id}, "model": lm.name, "model_facts": lm.facts.to_dict(),
                  "device": str(lm.device), "n_texts": len(texts or ()), "n_tokens": getattr(result, "n_tokens", 0),
                  "seconds": {k: round(v, 2) for k, v in timings.items()}, "versions": record["versions"],
                  "date": record["finished"]}
    report = Report(results={cell.analysis: result}, provenance=provenance)
    return write_cell(out, record, report=report.to_dict())


def failed_record(cell: Cell, error: BaseException | str, seconds: float = 0.0) -> dict[str, Any]:
    """The record of a cell that failed: ``error`` is an exception (``"TypeName: message"``) or a message.

    Example: ``write_cell(out, failed_record(cell, "worker lost"), error="worker lost")``"""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return _record(cell, "failed", text, seconds, [])


def write_cell(out: Path, record: dict[str, Any], *, report: dict | None = None, error: str | None = None) -> dict:
    """Write ``out/cells/<record id>/`` atomically: ``cell.json``, plus ``report.json`` and/or ``error.txt``.

    Example: ``write_cell(Path("sweeps/ckpts"), record, report=result_report)``"""

    def fill(folder: Path) -> None:
        if report is not None:
            (folder / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        if error is not None:
            (folder / "error.txt").write_text(error, encoding="utf-8")
        (folder / "cell.json").write_text(json.dumps(record, indent=1), encoding="utf-8")

    replace_folder(cell_folder(out, record["id"]), fill)
    return record


def read_cell(folder: Path) -> dict[str, Any] | None:
    """A cell folder's record, or None when ``cell.json`` is missing or not a valid record.

    Example: ``read_cell(Path("sweeps/ckpts/cells") / cell.id)["status"]  # "done" or "failed"``"""
    try:
        record = json.loads((Path(folder) / "cell.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or "status" not in record:
        return None
    return record


def _record(cell: Cell, status: str, error: str | None, seconds: float, metrics: list) -> dict[str, Any]:
    from workbench.report import package_versions

    return {"id": cell.id, "model": cell.model, "label": cell.label, "step": cell.step, "analysis": cell.analysis,
            "prompts": cell.prompts, "config": cell.config, "status": status, "error": error,
            "seconds": round(seconds, 3), "versions": package_versions(),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"), "metrics": metrics,
            "batch_size": cell.batch_size, "max_tokens": cell.max_tokens, "seed": cell.seed,
            "prompts_sha": cell.prompts_sha}


def _check_prompt_file(cell: Cell) -> None:
    """A prompt file edited since the spec was read would give numbers the cell's id does not describe."""
    import hashlib

    from workbench.errors import ConfigError

    if cell.prompts_sha and hashlib.sha256(Path(cell.prompts).read_bytes()).hexdigest() != cell.prompts_sha:
        raise ConfigError(f"prompt file {cell.prompts} changed since the sweep spec was read; re-run the sweep so "
                          "the cells' ids describe its new contents")
