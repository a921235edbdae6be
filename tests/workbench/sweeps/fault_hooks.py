"""Test-only hooks that Ray runs in each worker process (``runtime_env={"worker_process_setup_hook": ...}``), set up by
tests/workbench/sweeps/test_faults.py: they patch the sweep's cell code inside the worker, so a fault happens at a
chosen point of a cell rather than whenever a timer fires. Configured by environment variables (``runtime_env``'s
``env_vars``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

DELAY_ENV = "WB_TEST_CELL_DELAY"  # seconds each cell sleeps before it runs
KILL_ENV = "WB_TEST_KILL_MARKER"  # a file: the first worker to create it kills itself mid-write


def setup() -> None:
    """The worker_process_setup_hook: installs what the environment asks for."""
    if os.environ.get(DELAY_ENV):
        _slow_cells(float(os.environ[DELAY_ENV]))
    if os.environ.get(KILL_ENV):
        _kill_once_mid_write(Path(os.environ[KILL_ENV]))


def _slow_cells(delay: float) -> None:
    import workbench.sweeps.execute as execute

    real = execute.run_cell

    def run_cell(cell, lm, out, **kwargs):
        time.sleep(delay)
        return real(cell, lm, out, **kwargs)

    execute.run_cell = run_cell


def _kill_once_mid_write(marker: Path) -> None:
    """The first cell (over all workers) to reach its folder write dies by SIGKILL after filling the temporary folder
    and before renaming it into place: the worst moment, a whole cell computed and half of it on disk. The marker
    holds the killed process' id and the cell's id."""
    import workbench.sweeps.cells as cells

    real = cells.replace_folder

    def replace_folder(target, fill):
        def fill_then_die(tmp):
            value = fill(tmp)
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return value
            os.write(fd, f"{os.getpid()} {target.name}".encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
            return value  # never reached

        return real(target, fill_then_die)

    cells.replace_folder = replace_folder
