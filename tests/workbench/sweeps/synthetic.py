"""A synthetic sweep folder with known numbers, for the comparative report and the Sweeps page.

Three checkpoints of one family (``ckpts/step-{100,200,300}``, listed out of order) and one bundled model without a
step, × ``activation_spectra`` (bundled:prose; two site kinds) and ``weight_spectra`` (no prompts; whole matrices,
per-head rows and an embedding without a layer). The bundled model's weight_spectra cell failed. Values follow
``value(...)`` so tests can recompute what a figure must show.
"""

from __future__ import annotations

import json
from pathlib import Path

STEPS = (300, 100, 200)  # out of order on purpose: the step figure must sort them
LAYERS = (0, 1, 2)
ERROR = "RuntimeError: boom at layer 2"


def value(step: int | None, layer: int | None, kind: str, metric: str) -> float:
    """The synthetic metric value of a row."""
    base = {"hook_resid_post": 10.0, "hook_attn_out": 20.0, "W_Q": 30.0, "W_Q.h": 40.0, "W_E": 50.0}[kind]
    scale = 1.0 if metric in ("erank (centred)", "erank") else 100.0
    return scale * (base + (layer or 0) + (step or 1000) / 100)


def records(root: Path) -> list[dict]:
    """cell.json records (the store's upsert input) of the synthetic sweep."""
    models = [(str(root / "ckpts" / f"step-{s}"), f"step-{s}", s) for s in STEPS] + [("smollm2-135m", "SmolLM2", None)]
    out = []
    for model, label, step in models:
        act = [[m, layer, f"blocks.{layer}.{k}", value(step, layer, k, m)] for m in ("erank (centred)", "tokens")
               for k in ("hook_resid_post", "hook_attn_out") for layer in LAYERS]
        weights = [["erank", layer, "W_Q", value(step, layer, "W_Q", "erank")] for layer in LAYERS]
        weights += [["erank", layer, f"W_Q.h{h}", value(step, layer, "W_Q.h", "erank") + 2 * h]
                    for layer in LAYERS for h in (0, 1)]
        weights += [["erank", None, "W_E", value(step, None, "W_E", "erank")]]
        failed = step is None
        out.append(_record(f"a-{label}", model, label, step, "activation_spectra", "bundled:prose", {}, act))
        out.append(_record(f"w-{label}", model, label, step, "weight_spectra", "-", {"min_dim": 8},
                           [] if failed else weights, error=ERROR if failed else None))
    return out


def _record(cid, model, label, step, analysis, prompts, config, metrics, error=None) -> dict:
    return {"id": cid, "model": model, "label": label, "step": step, "analysis": analysis, "prompts": prompts,
            "config": config, "status": "failed" if error else "done", "error": error, "seconds": 1.5,
            "versions": {"workbench": "0.1.0"}, "finished": "2026-11-01T12:00:00", "metrics": metrics}


def write_database(out: Path, recs: list[dict]) -> Path:
    """``out/results.duckdb`` holding ``recs``, written through the store."""
    from workbench.sweeps.store import DB_NAME, ResultsStore

    out.mkdir(parents=True, exist_ok=True)
    ResultsStore(out / DB_NAME).upsert_many(recs)
    return out / DB_NAME


def write_cell_folders(out: Path, recs: list[dict]) -> None:
    """``out/cells/<id>/cell.json`` for each record (the source of truth the database is rebuilt from)."""
    for r in recs:
        folder = out / "cells" / r["id"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cell.json").write_text(json.dumps(r), encoding="utf-8")


def make_sweep(out: Path) -> list[dict]:
    """A complete synthetic sweep in ``out`` (cell folders and database); returns its records."""
    recs = records(out)
    write_cell_folders(out, recs)
    write_database(out, recs)
    return recs
