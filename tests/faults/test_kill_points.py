"""SIGKILL at seeded points of every atomic write (issue 21 point 1): the SAE cache (``cached_sae``), ``workbench
report --out``, ``save_edits`` and the model cache (``ensure_converted`` of a bundled source, with a stand-in
conversion that writes the same kinds of files in a fraction of a second; the real conversion of the bundled GGUF,
about 20 s a run, is killed the same way in test_kill_conversion.py, marked slow).

Each job runs in a fork server (tests/faults/child.py: one interpreter, started with ``subprocess.Popen``, that
forks one real process per run), killed with SIGKILL just before its N-th file-system event under the test's
folder (open for writing, mkdir, mkdtemp, chmod, rename, remove, rmtree — seen by an audit hook, so the points are
deterministic however loaded the machine); a replacing writer is also killed in the gap between moving the old
version aside and renaming the new one in. After each kill the target is absent or complete; the next run finds it
complete or rebuilds it, its files equal those of an uninterrupted run, and the folder holds the target alone (the
next writer removed the dead writer's temporary folder and lock file).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.kills import KILLED, POINTS, Job, contents, kill_points


def _kill_and_recover(run, parent: Path, target, complete, *, fresh: bool, seed: str) -> list[int]:
    """The reference run, then per kill point: kill, check (absent or complete), re-run, check (complete, equal to the
    reference by ``complete``'s measure, nothing else in ``parent``). ``fresh``: delete the target before each kill
    (for a cache, whose existing entry would only be read), and the points include the last event (the target whole,
    its lock file not yet removed: the next run finds a whole entry and must still clear the lock file); else every
    kill replaces a whole target, and the points include the event just after the old version was moved aside.
    Returns the kill points."""
    pid, code = run(0)
    assert code == 0
    reference = complete(target())
    points = sorted(set(kill_points(seed, run.events())) | {run.events()})
    if not fresh:  # a replacing run: also kill in the gap between moving the old version aside and renaming the new in
        assert run(0)[1] == 0
        events = run.log()
        gap = next(i for i, line in enumerate(events, 1) if line.startswith("shutil.rmtree") and ".old-" in line)
        points = sorted(set(kill_points(seed, len(events))) | {gap})
    for point in points:
        if fresh:
            import shutil

            shutil.rmtree(target())
        pid, code = run(point)
        assert code == KILLED, f"the run was not killed at event {point} (exit {code})"
        found = target(missing_ok=True)
        if found is not None and found.exists():
            assert complete(found) == reference, f"half-written target after a kill at event {point}"
        pid, code = run(0)
        assert code == 0, f"the run after a kill at event {point} failed (exit {code})"
        assert complete(target()) == reference
        assert sorted(p.name for p in parent.iterdir()) == [target().name], f"litter after a kill at event {point}"
    return points


@pytest.fixture
def fault_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return root


def test_sae_cache_survives_sigkill(fork_server, fault_root):
    parent = fault_root / "sae"

    def target(missing_ok=False):
        found = [p for p in parent.glob("*") if not p.name.startswith(".")] if parent.exists() else []
        assert found or missing_ok
        return found[0] if found else None

    def complete(folder):
        found = contents(folder)
        assert json.loads(found["workbench-sae.json"])["identity"]
        return found

    job = Job(fork_server, "sae", fault_root)
    assert len(_kill_and_recover(job, parent, target, complete, fresh=True, seed="sae")) >= POINTS


def test_save_edits_survives_sigkill(fork_server, fault_root):
    from workbench.intervene.edit import load_edits

    def complete(folder):
        assert len(load_edits(folder)) == 2
        return contents(folder)

    parent = fault_root / "out"
    job = Job(fork_server, "edits", fault_root)
    assert len(_kill_and_recover(job, parent, lambda missing_ok=False: parent / "edits", complete, fresh=False,
                                 seed="edits")) >= POINTS


def test_model_cache_survives_sigkill(fork_server, fault_root):
    from workbench.models.cache import verify

    def complete(folder):
        assert verify(folder) is None
        return contents(folder)

    parent = fault_root / "models"
    job = Job(fork_server, "model", fault_root)
    assert len(_kill_and_recover(job, parent, lambda missing_ok=False: parent / "fake", complete, fresh=True,
                                 seed="model")) >= POINTS


def test_report_out_survives_sigkill(fork_server, fault_root, tiny_model_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the mat\nhello world again\n")

    def complete(folder):
        data = json.loads((folder / "report.json").read_text())
        assert (folder / "report.html").read_text(encoding="utf-8").rstrip().endswith("</html>")
        return sorted(data["results"])  # timings differ from run to run; the analyses do not

    parent = fault_root / "out"
    job = Job(fork_server, "report", fault_root, str(tiny_model_folder), str(prompts), "--overwrite")
    assert len(_kill_and_recover(job, parent, lambda missing_ok=False: parent / "report", complete, fresh=False,
                                 seed="report")) >= POINTS
