"""Sweeps on a local Ray (one session for the module): three tiny random checkpoints × activation_spectra and
weight_spectra × two prompt sets; every cell done, each model loaded once per worker, a re-run from a subprocess skips
everything, and a grid point that makes the analysis raise fails its cells while the others finish."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.workbench.sweeps.builders import SHORT_PROMPTS, make_checkpoints
from workbench.cli import app
from workbench.sweeps import load_spec, open_store, run_sweep
from workbench.sweeps.execute import LOG_NAME

STEPS = (0, 10, 20)
SPEC = """
analyses = ["activation_spectra", "weight_spectra"]
prompts = ["short.txt", "bundled:dialogue"]
batch_size = 2
max_tokens = 48

[[models]]
glob = "ckpts/step-*"

[grid.activation_spectra]
sites = {sites}
n_values = 8
"""
RESID = '["blocks.*.hook_resid_post"]'


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module: 2 CPUs, no dashboard, usage statistics off (run_sweep uses a session it finds)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)  # "local": a Ray of its own, whatever cluster /tmp/ray names
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Three checkpoints (the tiny Llama, each perturbed with its own seed), a prompt file and the two specs."""
    root = tmp_path_factory.mktemp("sweep")
    make_checkpoints(root, STEPS)
    (root / "short.txt").write_text(SHORT_PROMPTS)
    (root / "a.toml").write_text(SPEC.format(sites=f"[{RESID}]"))
    # b: the same cells plus a grid point whose site does not exist (fails) and one more that works
    (root / "b.toml").write_text(SPEC.format(sites=f'[{RESID}, ["blocks.9.hook_resid_post"], '
                                                   '["blocks.*.hook_mlp_out"]]'))
    return root


@pytest.fixture(scope="module")
def first_run(ray_session, sweep_dir):
    out = sweep_dir / "out"
    return run_sweep(load_spec(sweep_dir / "a.toml"), out, max_parallel=2, progress=False), out


def test_every_cell_done_once_with_one_model_load_per_worker(first_run, sweep_dir):
    summary, out = first_run
    assert (summary.total, summary.done_now, summary.skipped, summary.failed) == (9, 9, 0, 0)
    models = {str((sweep_dir / "ckpts" / f"step-{s}").resolve()) for s in STEPS}
    assert len(summary.loads) == 2 and set().union(*summary.loads) == models
    assert all(len(set(loads)) == len(loads) for loads in summary.loads)  # no worker loaded a model twice
    cells = open_store(out).cells()
    assert len(cells) == 9 and set(cells.status) == {"done"}
    assert sorted(set(zip(cells.label, cells.step))) == [(f"step-{s}", s) for s in STEPS]
    assert sorted(cells.prompts.unique()) == sorted(["-", "bundled:dialogue", str(sweep_dir / "short.txt")])
    metrics = open_store(out).query("SELECT c.step, c.analysis, c.prompts, m.* FROM metrics m JOIN cells c ON "
                                    "c.id = m.cell")
    assert metrics.groupby("cell").size().size == 9
    act = metrics[(metrics.metric == "erank (centred)") & (metrics.prompts == "bundled:dialogue")]
    assert sorted(zip(act.step, act.layer, act.site)) == [(s, layer, f"blocks.{layer}.hook_resid_post")
                                                         for s in STEPS for layer in (0, 1)]
    w_q = metrics[(metrics.metric == "erank") & (metrics.site == "W_Q") & (metrics.layer == 0)]
    assert len(w_q) == 3 and w_q.value.nunique() == 3  # three different checkpoints
    lines = (out / LOG_NAME).read_text().splitlines()
    assert sum(" cell done " in line for line in lines) == 9
    assert sum("(loaded the model)" in line for line in lines) == sum(map(len, summary.loads))
    assert lines[-1].endswith(summary.line())
    assert len(list((out / "cells").iterdir())) == 9


def test_rerun_from_a_subprocess_skips_every_cell_and_restores_the_database(first_run, sweep_dir):
    _, out = first_run
    store = open_store(out)
    lost = store.query("SELECT id FROM cells ORDER BY id LIMIT 1").id[0]
    store.query("DELETE FROM cells WHERE id = ?", [lost])  # as if the driver died between folder and database
    store.query("DELETE FROM metrics WHERE cell = ?", [lost])
    result = subprocess.run([sys.executable, "-m", "workbench", "sweep", str(sweep_dir / "a.toml"), "--out", str(out)],
                            capture_output=True, text=True, cwd=sweep_dir, env=os.environ | {"PYTHONPATH": ""},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "sweep: 9 cells, 0 done now, 9 skipped (already done), 0 failed"
    assert lost in store.ids("done") and len(store.ids()) == 9
    assert len(store.metrics().query("cell == @lost")) > 0


def test_a_raising_grid_point_fails_its_cells_and_the_others_finish(first_run, sweep_dir):
    _, out = first_run
    stale = out / "cells" / ".0123456789abcdef.tmp-x1"  # left by a kill mid-write
    stale.mkdir()
    result = CliRunner().invoke(app, ["sweep", str(sweep_dir / "b.toml"), "--out", str(out), "--max-parallel", "2"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == "sweep: 21 cells, 6 done now, 9 skipped (already done), 6 failed"
    assert not stale.exists()
    cells = open_store(out).cells()
    failed = cells[cells.status == "failed"]
    assert len(cells) == 21 and len(failed) == 6
    assert all(config.count("blocks.9") for config in failed.config)
    assert all(error.startswith("SiteError: ") for error in failed.error)
    assert all((out / "cells" / cid / "error.txt").is_file() for cid in failed.id)
    log = (out / LOG_NAME).read_text()
    assert log.count(" cell failed ") == 6 and "SiteError" in log


def test_resume_without_work_reconciles_folders_into_the_database(tmp_path):
    """All cells done on disk: nothing starts Ray; cells missing from the database, or relabelled since, are written
    into it (and a relabel reaches cell.json, since the id ignores labels); stale temporary folders go."""
    from workbench.sweeps import parse_spec
    from workbench.sweeps.cells import failed_record, read_cell, write_cell

    (tmp_path / "model").mkdir()
    data = {"analyses": ["weight_spectra"], "models": [{"source": "model", "label": "old"}],
            "grid": {"weight_spectra": {"per_head": [True, False]}}}
    old = parse_spec(data, tmp_path)
    out = tmp_path / "out"
    for cell in old.cells:
        write_cell(out, failed_record(cell, "") | {"status": "done", "error": None, "metrics": [["erank", 0, "W_Q", 1.0]]})
    (out / "cells" / f".{old.cells[0].id}.tmp-abc").mkdir()
    relabelled = parse_spec(data | {"models": [{"source": "model", "label": "new", "step": 5}]}, tmp_path)
    summary = run_sweep(relabelled, out, progress=False)
    assert (summary.total, summary.done_now, summary.skipped, summary.failed, summary.loads) == (2, 0, 2, 0, ())
    cells = open_store(out).cells()
    assert sorted(cells.label) == ["new", "new"] and set(cells.step) == {5}
    assert read_cell(out / "cells" / old.cells[1].id)["label"] == "new"
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(c.id for c in old.cells)
    assert len(open_store(out).metrics()) == 2
