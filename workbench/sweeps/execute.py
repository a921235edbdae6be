"""Run a sweep on Ray: one actor per worker keeps its model loaded across that model's cells; resumable.

The driver (this process) owns the database and the progress bar; workers own the cell folders. Each worker is a
:class:`CellWorker` actor created with ``max_restarts``/``max_task_retries``, so when its process or node dies Ray
restarts it and re-runs the cell it was running (Ray's retries, nothing home-made). A cell whose retries run out is
recorded failed with the Ray error. An actor whose node is lost is restarted on another node only if one has a free CPU
(GPU): each actor holds one for life, so when the surviving nodes have fewer than there are workers, Ray would wait
for a node forever; the driver gives that many waiting actors up after ``STRANDED_S`` and hands their cells to the
remaining workers. A re-run reconciles first: cells whose folder says done are skipped (and put into
the database if the driver died before it wrote them), the rest run. The cell folder is written atomically, so a kill
at any moment leaves a cell whole or absent, never half-written; the database is an index of the folders.

Locally (no address) Ray starts on this machine's CPUs, bound to the loopback interface, without its dashboard or
usage statistics; ``address="auto"`` or ``"ray://host:port"`` joins a running cluster, whose nodes must see the
model folders, prompt files and the output folder at the same paths (shared storage).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, config_error
from workbench.sweeps.cells import CELLS, cell_folder, failed_record, read_cell, run_cell, write_cell
from workbench.sweeps.spec import Cell, SweepSpec
from workbench.sweeps.store import ResultsStore, open_store

__all__ = ["LOG_NAME", "MAX_RESTARTS", "MAX_TASK_RETRIES", "CellWorker", "SweepSummary", "run_sweep"]

log = logging.getLogger(__name__)

LOG_NAME = "sweep.log"
MAX_RESTARTS = 3  # an actor whose process (or node) dies is restarted this many times ...
MAX_TASK_RETRIES = 3  # ... and the cell it was running is re-run this many times before it is recorded failed
POLL_S = 5.0  # the driver looks this often for workers that cannot be re-placed ...
STRANDED_S = 30.0  # ... and gives up one that has waited this long for a node with room, moving its cell elsewhere
_WAITING = ("RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY")  # Ray's states of an actor not yet placed


@dataclass(frozen=True)
class SweepSummary:
    """What a run did. ``loads``: per worker, the models it loaded, in order (each at most once unless the worker
    was restarted); ``report``: the comparative report's path, None when it was not written.

    Example: ``summary: SweepSummary = run_sweep(load_spec("sweep.toml"), "sweeps/readme"); summary.failed``"""

    total: int
    done_now: int
    skipped: int
    failed: int
    loads: tuple[tuple[str, ...], ...] = ()
    report: str | None = None

    def line(self) -> str:
        """The one-line summary the CLI prints last: ``sweep: N cells, D done now, S skipped (already done), F failed``.

        Example: ``run_sweep(load_spec("sweep.toml"), "sweeps/readme").line()``"""
        return (f"sweep: {self.total} cells, {self.done_now} done now, {self.skipped} skipped (already done), "
                f"{self.failed} failed")


class CellWorker:
    """The body of a Ray actor (wrapped with ``ray.remote`` by :func:`run_sweep`): runs cells, keeping the last
    model it loaded, and writes each cell's folder itself.

    Example: ``worker = CellWorker("sweeps/readme", "cpu"); worker.run(spec.cells[0].to_dict())``"""

    def __init__(self, out: str, device: str) -> None:
        self.out, self.device = Path(out), device
        self.model: str | None = None
        self.lm = None
        self.loaded: list[str] = []

    def run(self, cell_data: dict[str, Any]) -> dict[str, Any]:
        """Run one cell (loading its model unless already held); return its record plus ``worker`` facts.

        Example: ``CellWorker("sweeps/readme", "cpu").run(spec.cells[0].to_dict())["status"]``"""
        cell = Cell.from_dict(cell_data)
        loaded = self.model != cell.model
        if loaded:
            try:
                self._load(cell.model)
            except Exception as exc:  # noqa: BLE001 - a model that cannot load fails its cells, not the worker
                record = write_cell(self.out, failed_record(cell, exc), error=traceback.format_exc())
                return record | {"worker": self._facts(loaded)}
        return run_cell(cell, self.lm, self.out) | {"worker": self._facts(loaded)}

    def loads(self) -> list[str]:
        """The models this worker has loaded, in order (the test that each model loads once per worker reads it).

        Example: ``worker.loads()  # ["smollm2-135m"]``"""
        return list(self.loaded)

    def _load(self, model: str) -> None:
        from workbench.models import load_model

        self.model, self.lm = None, None  # release the previous model before loading the next
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        self.lm = load_model(model, device=self.device)
        self.model = model
        self.loaded.append(model)

    def _facts(self, loaded: bool) -> dict[str, Any]:
        return {"pid": os.getpid(), "loaded_model": loaded}


def run_sweep(spec: SweepSpec, out: str | Path, *, address: str | None = None, max_parallel: int | None = None,
              device: str = "cpu", progress: bool = True) -> SweepSummary:
    """Run every cell of ``spec`` not already done in ``out`` (see the module docstring); write the database,
    ``out/sweep.log`` (a line per cell) and the comparative report ``out/report.html``.

    ``max_parallel``: the number of workers (default: the cluster's CPUs, or GPUs for a ``cuda`` device, at most the
    number of cells to run). Raises ConfigError for a bad ``device`` or ``max_parallel`` before anything runs.

    Example: ``run_sweep(load_spec("sweep.toml"), "sweeps/readme", max_parallel=1).line()``"""
    _check_args(device, max_parallel)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    store = open_store(out)
    from workbench.progress import bar

    with open(out / LOG_NAME, "a", encoding="utf-8") as log_file:
        say = _logger(log_file)
        pending, skipped = _reconcile(spec, out, store)
        say(f"start: {len(spec.cells)} cells, {len(skipped)} already done, {len(pending)} to run")
        progress_bar = bar(total=len(spec.cells), desc="sweep", unit="cell", disable=not progress)
        progress_bar.update(len(skipped))
        try:
            done, failed, loads = (_execute(pending, out, store, address, max_parallel, device, progress_bar, say)
                                   if pending else (0, 0, ()))
        finally:
            progress_bar.close()
        _remove_stale(out)  # a worker killed mid-write leaves its temporary folder; Ray re-ran the cell elsewhere
        report = _write_report(out, say)
        summary = SweepSummary(total=len(spec.cells), done_now=done, skipped=len(skipped), failed=failed,
                               loads=loads, report=report)
        say(summary.line())
    return summary


def _check_args(device: str, max_parallel: int | None) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise config_error("run_sweep", "device", "a torch device such as 'cpu' or 'cuda'", device) from None
    if max_parallel is not None and (not isinstance(max_parallel, int) or isinstance(max_parallel, bool)
                                     or max_parallel < 1):
        raise config_error("run_sweep", "max_parallel", "None or an int >= 1", max_parallel)


def _remove_stale(out: Path) -> None:
    """Temporary folders left by a kill mid-write (``cells/.<id>.tmp-*``, ``.<id>.old-*``), lock files
    (``cells/.<id>.lock``, see :func:`workbench.atomic.folder_lock`) and temporary databases: before a run (a killed
    driver's) and after it (a killed worker's, whose cell Ray ran again) — never while a worker may hold a lock."""
    for path in [*(out / CELLS).glob(".*.tmp-*"), *(out / CELLS).glob(".*.old-*")]:
        shutil.rmtree(path, ignore_errors=True)
    for path in (out / CELLS).glob(".*.lock"):
        path.unlink(missing_ok=True)
    for path in out.glob(".results.duckdb.tmp-*"):
        path.unlink(missing_ok=True)


def _reconcile(spec: SweepSpec, out: Path, store: ResultsStore) -> tuple[list[Cell], list[Cell]]:
    """Split the cells into (to run, already done); done folders missing from the database (or relabelled since)
    are written into it now."""
    in_db = store.ids("done")
    pending, skipped, records = [], [], []
    for cell in spec.cells:
        record = read_cell(cell_folder(out, cell.id))
        if record is None or record.get("status") != "done":
            pending.append(cell)
            continue
        skipped.append(cell)
        if (record.get("label"), record.get("step")) != (cell.label, cell.step):
            record = record | {"label": cell.label, "step": cell.step}
            _replace_json(cell_folder(out, cell.id) / "cell.json", record)
            records.append(record)
        elif cell.id not in in_db:
            records.append(record)
    store.upsert_many(records)
    return pending, skipped


def _replace_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _logger(log_file):
    def say(line: str) -> None:
        log_file.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")
        log_file.flush()
        log.info("%s", line)
    return say


def _cell_line(record: dict[str, Any]) -> str:
    worker = record.get("worker") or {}
    step = "" if record.get("step") is None else f" step {record['step']}"
    config = json.dumps(record.get("config") or {}, sort_keys=True)
    where = f" worker {worker['pid']}{' (loaded the model)' if worker.get('loaded_model') else ''}" if worker else ""
    error = f": {record['error']}" if record.get("error") else ""
    return (f"cell {record['status']} {record['id']} {record.get('label')}{step} {record.get('analysis')} prompts "
            f"{record.get('prompts')} config {config} {record.get('seconds', 0):.1f} s{where}{error}")


# --- Ray ---------------------------------------------------------------------------------------------------------------

def _connect(address: str | None, max_parallel: int | None) -> tuple[Any, bool]:
    """``(ray, started)``: an already initialised session is used as is (started False); otherwise a local one on the
    loopback interface (no address; with at least ``max_parallel`` CPUs, so that many workers can start) or the
    cluster at ``address``."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None and "ray" not in sys.modules:
        # Ray resolves "127.0.0.1" to a routable address and its gRPC servers listen on every interface unless its
        # cluster support is off; off, a local sweep stays on loopback. Read once, when ray is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return ray, False
    if address is None:
        # "local": a new Ray of our own, even when RAY_ADDRESS or /tmp/ray/ray_current_cluster (left by `ray start`,
        # or stale after a crash) names a cluster, which ray.init() without an address would join (or fail on)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, max_parallel or 0), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray, True


def _execute(pending: list[Cell], out: Path, store: ResultsStore, address: str | None, max_parallel: int | None,
             device: str, progress_bar, say) -> tuple[int, int, tuple[tuple[str, ...], ...]]:
    ray, started = _connect(address, max_parallel)
    try:
        return _Dispatcher(ray, pending, out, store, max_parallel, device, progress_bar, say).run()
    finally:
        if started:
            ray.shutdown()


class _Dispatcher:
    """Hands cells to idle actors, a cell of the model the actor already holds first, and records what returns."""

    def __init__(self, ray, pending, out, store, max_parallel, device, progress_bar, say) -> None:
        self.ray, self.out, self.store, self.bar, self.say = ray, out, store, progress_bar, say
        self.queues: dict[str, deque[Cell]] = {}
        for cell in pending:
            self.queues.setdefault(cell.model, deque()).append(cell)
        gpus = 1 if device.startswith("cuda") else 0
        resources = ray.cluster_resources()
        if gpus and resources.get("GPU", 0) < 1:
            raise ConfigError(f"run_sweep(): device {device!r} asks for a GPU per worker, but the Ray cluster has "
                              f"none (resources: {resources})")
        capacity = max(1, int(resources.get("GPU" if gpus else "CPU", 1)))
        if max_parallel and max_parallel > capacity:  # an actor holds its CPU (GPU) for life: more would never start
            say(f"ray: --max-parallel {max_parallel} is more than the cluster's {capacity} "
                f"{'GPUs' if gpus else 'CPUs'}; running {capacity} workers")
        self.n = min(max_parallel or capacity, capacity, len(pending))
        self.actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=MAX_RESTARTS,
                                      max_task_retries=MAX_TASK_RETRIES)(CellWorker)
        self.device = device
        self.kind = "GPU" if gpus else "CPU"
        self.actors: list[Any] = [self._new_actor() for _ in range(self.n)]  # None: a worker given up
        self.held: list[str | None] = [None] * self.n
        self.waiting_since: dict[int, float] = {}
        self.checked = time.monotonic()
        self.watch = True  # False once the workers' states could not be read
        self.done = self.failed = 0
        self.retired: list[tuple[str, ...]] = []
        say(f"ray: {self.n} workers on {device}; cluster resources {dict(resources)}")

    def _new_actor(self):
        return self.actor_class.remote(str(self.out), self.device)

    def run(self) -> tuple[int, int, tuple[tuple[str, ...], ...]]:
        inflight: dict[Any, tuple[int, Cell]] = {}
        while inflight or any(self.queues.values()):
            busy = {i for i, _ in inflight.values()}
            for i, actor in enumerate(self.actors):
                if actor is not None and i not in busy and (cell := self._next(i)) is not None:
                    inflight[actor.run.remote(cell.to_dict())] = (i, cell)
            if not inflight:  # cells left and every worker given up
                self._fail_queued("no worker left: every worker's node was lost and no node has a free "
                                  f"{self.kind} for it")
                break
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                i, cell = inflight.pop(ref)
                self._record(self._result(ref, i, cell))
            if time.monotonic() - self.checked >= POLL_S:  # also while the other workers keep returning cells
                self._give_up_stranded(inflight)
                self.checked = time.monotonic()
        return self.done, self.failed, tuple(self.retired) + self._loads()

    def _give_up_stranded(self, inflight: dict[Any, tuple[int, Cell]]) -> None:
        """Ray restarts an actor whose node died only on a node with its resources free, and ours hold theirs for
        life: when the live nodes have fewer CPUs (GPUs) than there are workers, that many workers can never be
        placed and Ray would wait for a node forever. Give up that many of those waiting ``STRANDED_S`` or more to be
        (re)placed, longest first (killed for good, their cells back at the front of the queue). Counting capacity
        rather than free slots keeps a restart in progress, which holds its new slot already, from looking stuck; it
        assumes the sweep has the cluster to itself (another job's use only delays this)."""
        states = self._states() if self.watch else None
        if states is None:
            return
        now = time.monotonic()
        for i, state in states.items():
            if state in _WAITING:
                self.waiting_since.setdefault(i, now)
            else:
                self.waiting_since.pop(i, None)
        excess = len(states) - int(self.ray.cluster_resources().get(self.kind, 0))
        stranded = sorted((since, i) for i, since in self.waiting_since.items() if now - since >= STRANDED_S)
        for since, i in stranded[:max(excess, 0)]:
            self.say(f"ray: worker {i} has waited {now - since:.0f} s to be placed and the live nodes have "
                     f"{len(states) - excess} {self.kind}s for {len(states)} workers (a node was lost); giving it "
                     "up, its cell goes to the other workers")
            self.ray.kill(self.actors[i], no_restart=True)
            self.actors[i], self.held[i] = None, None
            self.waiting_since.pop(i, None)
            for ref, (j, cell) in list(inflight.items()):
                if j == i:
                    del inflight[ref]
                    self.queues.setdefault(cell.model, deque()).appendleft(cell)

    def _states(self) -> dict[int, str] | None:
        """Ray's state of each live worker (``ALIVE``, ``RESTARTING``, ...), read from the cluster's control store;
        None when it cannot be read (then no worker is given up, and it is not tried again)."""
        try:
            from ray._private import state  # ray.util.state asks the dashboard, which a local sweep does not start

            return {i: state.actors(actor._actor_id.hex()).get("State") for i, actor in enumerate(self.actors)
                    if actor is not None}
        except Exception as exc:  # noqa: BLE001 - a Ray without this private API only loses the node-loss watch
            self.watch = False
            self.say(f"ray: cannot read the workers' states ({type(exc).__name__}: {exc}); a worker whose node is "
                     "lost may be waited for")
            log.warning("cannot read the workers' states (%s: %s); a worker whose node is lost may be waited for",
                        type(exc).__name__, exc)
            return None

    def _fail_queued(self, error: str) -> None:
        for queue in self.queues.values():
            while queue:
                self._record(write_cell(self.out, failed_record(queue.popleft(), error)))

    def _next(self, i: int) -> Cell | None:
        """The next cell for actor ``i``: of the model it holds if any remain, else of the model the fewest other
        actors hold (so models spread over workers and none is loaded twice by one worker)."""
        if self.held[i] is not None and self.queues.get(self.held[i]):
            return self.queues[self.held[i]].popleft()
        waiting = [m for m, q in self.queues.items() if q]
        if not waiting:
            return None
        model = min(waiting, key=lambda m: sum(h == m for h in self.held))
        self.held[i] = model
        return self.queues[model].popleft()

    def _result(self, ref, i: int, cell: Cell) -> dict[str, Any]:
        """The cell's record, or a failed one written by the driver when the actor died past its retries."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self._replace_actor(i)
            error = f"worker died and Ray's retries ran out: {type(exc).__name__}: {exc}"
        except ray.exceptions.RayError as exc:
            error = f"{type(exc).__name__}: {exc}"
        existing = read_cell(cell_folder(self.out, cell.id))
        if existing is not None and existing.get("status") == "done":
            return existing  # a retry that finished after all
        return write_cell(self.out, failed_record(cell, error))

    def _replace_actor(self, i: int) -> None:
        """A fresh actor in place of one that is gone for good (its restarts spent or its node lost)."""
        try:
            self.retired.append(tuple(self.ray.get(self.actors[i].loads.remote(), timeout=5)))
        except Exception:  # noqa: BLE001 - a dead actor cannot say what it loaded
            pass
        self.ray.kill(self.actors[i], no_restart=True)
        self.actors[i], self.held[i] = self._new_actor(), None

    def _record(self, record: dict[str, Any]) -> None:
        self.store.upsert(record)
        self.done += record["status"] == "done"
        self.failed += record["status"] != "done"
        self.say(_cell_line(record))
        self.bar.update(1)

    def _loads(self) -> tuple[tuple[str, ...], ...]:
        out = []
        for actor in filter(None, self.actors):
            try:
                out.append(tuple(self.ray.get(actor.loads.remote(), timeout=30)))
            except Exception:  # noqa: BLE001 - a worker lost at the end only loses its count
                out.append(())
        return tuple(out)


def _write_report(out: Path, say) -> str | None:
    """The comparative report ``out/report.html``; a failure is logged, not raised (the numbers are already safe)."""
    from workbench.sweeps.compare import write_sweep_report  # plotly and pandas: imported only when reporting

    try:
        return str(write_sweep_report(out))
    except Exception as exc:  # noqa: BLE001 - the report is derived from the database and can be rewritten later
        say(f"report: not written ({type(exc).__name__}: {exc})")
        log.warning("report.html not written: %s: %s", type(exc).__name__, exc)
        return None
