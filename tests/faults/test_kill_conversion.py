"""SIGKILL during the real conversion of the bundled model (issue 21 point 1): ``ensure_converted`` of SmolLM2-135M
(its Q4_1 GGUF dequantised and saved as a 538 MB float32 Hugging Face folder, about 20 s a run) in a fork-server
process (tests/faults/child.py), into a cache of its own.

Kill points, drawn with a fixed seed:
- inside the weight file, once a random byte of it is written (a thread of the killed process watches the write
  position in ``/proc/self/fdinfo``: safetensors writes from Rust, so no audit event marks the inside of that file);
- at ``POINTS`` random file-system events of the conversion (SIGKILL, as in test_kill_points.py).

After each, the cache holds no model folder or a whole one, and the next run ends with a folder byte-identical to the
session's own cached conversion (the one every slow test loads) and nothing beside it: the dead writer's temporary
folder and lock file are gone. Marked slow: ten conversions, about 3-4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from tests.faults.kills import KILLED, POINTS, Job, digests, kill_points

pytestmark = pytest.mark.slow

NAME = "smollm2-135m"
WEIGHTS = "model.safetensors"
MANIFEST = "workbench-manifest.json"


def _fingerprint(folder):
    """Every file's SHA-256, but of the manifest only its files' part (its provenance records the time taken)."""
    found = digests(folder)
    found[MANIFEST] = json.loads((folder / MANIFEST).read_text())["files"]
    return found


@pytest.fixture(scope="module")
def reference():
    """The session's cached conversion (converted once, shared with ``real_model``): its fingerprint."""
    from workbench.models import bundled

    return _fingerprint(bundled.ensure_converted(bundled.get_bundled(NAME)))


def test_bundled_conversion_survives_kills(fork_server, tmp_path, reference):
    from workbench.models import bundled

    root = tmp_path / "root"
    root.mkdir()
    parent, target = root / "models", root / "models" / NAME
    job = Job(fork_server, "bundled", root)

    def recover(after: str) -> None:
        pid, code = job(0)
        assert code == 0, f"the run after a kill {after} failed:\n{job.stderr(pid)[-3000:]}"
        assert _fingerprint(target) == reference, f"the folder rebuilt after a kill {after} differs from the reference"
        assert sorted(p.name for p in parent.iterdir()) == [NAME], f"litter after a kill {after}"

    # inside the weight file
    weights = (bundled.get_bundled(NAME).cache_folder() / WEIGHTS).stat().st_size
    offset = random.Random("bundled-weights").randrange(weights // 10, weights // 2)
    pid, code = job(0, kill_at_offset=offset)
    assert code == KILLED, f"the run was not killed inside the weight file (exit {code}):\n{job.stderr(pid)[-3000:]}"
    path, position = job.offset()
    assert f"/.{NAME}.tmp-{pid}-" in path and offset <= position < weights, (path, position)
    assert not target.exists(), "a model folder appeared although its weights were cut short"
    recover(f"at byte {position:,} of {weights:,} of the weights")

    # at file-system events
    events = job.log()
    points = kill_points("bundled", len(events))
    assert len(points) == POINTS and any(line.startswith("tempfile.mkdtemp") for line in events)
    for point in points:
        shutil.rmtree(target)
        pid, code = job(point)
        assert code == KILLED, f"the run was not killed at event {point} (exit {code}):\n{job.stderr(pid)[-3000:]}"
        if target.exists():  # killed after the rename: what is there must be whole
            assert _fingerprint(target) == reference, f"half-written folder after a kill at event {point}"
        recover(f"at event {point} ({events[point - 1]})")
