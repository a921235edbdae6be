"""What the SIGKILL tests share: the number of seeded kill points per artefact, how they are drawn, and a job on the
fork server (tests/faults/child.py)."""

from __future__ import annotations

import hashlib
import random
import signal
from pathlib import Path

POINTS = 4  # kill points per artefact (seeded random draws among all the job's events)
KILLED = -signal.SIGKILL


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def digests(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` by name, as a SHA-256 (for folders too large to hold twice in memory)."""
    found = {}
    for path in sorted(folder.iterdir()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 22), b""):
                digest.update(block)
        found[path.name] = digest.hexdigest()
    return found


def kill_points(seed: str, n_events: int) -> list[int]:
    """``POINTS`` distinct event numbers in 1..n_events (all of them when fewer), drawn with ``seed``, sorted."""
    return sorted(random.Random(seed).sample(range(1, n_events + 1), min(POINTS, n_events)))


class Job:
    """One job on the server: ``job(n)`` runs it killed at event n (``kill_at_offset``: also killed once a file under
    its root is written up to that byte; ``job.offset()`` then says which file, and where); ``job.events()``: the
    last full run's count; ``job.log()``: its events."""

    def __init__(self, server, name: str, root: Path, *args: str) -> None:
        self.server, self.name, self.root, self.args = server, name, root, args

    def __call__(self, kill_at: int, *, kill_at_offset: int = 0) -> tuple[int, int]:
        return self.server.run(self.name, self.root, kill_at, *self.args, kill_at_offset=kill_at_offset)[0]

    def offset(self) -> tuple[str, int]:
        """The file and position at which the last ``kill_at_offset`` run was killed."""
        path, position = (self.root.parent / f"{self.name}.count.offset").read_text().split("\n")[:2]
        return path, int(position)

    def events(self) -> int:
        return int((self.root.parent / f"{self.name}.count").read_text())

    def log(self) -> list[str]:
        return (self.root.parent / f"{self.name}.count.log").read_text().splitlines()

    def stderr(self, pid: int) -> str:
        """What run ``pid`` wrote to stderr."""
        path = self.root.parent / f"{pid}.err"
        return path.read_text(errors="replace") if path.exists() else ""
