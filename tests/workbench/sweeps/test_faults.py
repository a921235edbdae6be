"""Sweeps survive faults (issue 18, point 4): SIGKILL of the driver then a re-run, SIGKILL of a worker mid-cell, and
the loss of cluster nodes mid-sweep (``ray.cluster_utils.Cluster``, several raylets on this machine). Each ends with
every cell done once: one whole folder per cell, one row per cell in the database, its metrics once.

Every test runs Ray under its own RAY_TMPDIR (sessions, sockets and the cluster-address file apart from any other Ray
on the machine) and, when it ends, kills whatever of its Ray is still running and fails if anything was; while Ray
runs, the tests check that none of its processes listens outside 127.0.0.1. Faults are placed by test-only hooks that
Ray runs in each worker (fault_hooks.py), so they hit a chosen point of a cell.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.workbench.sweeps import fault_hooks
from tests.workbench.sweeps.builders import SHORT_PROMPTS, make_checkpoints
from workbench.sweeps import load_spec, open_store, run_sweep
from workbench.sweeps.execute import LOG_NAME

ROOT = Path(__file__).resolve().parents[3]  # the repository (workers import the hooks from there)
SUMMARY = "sweep: {n} cells, {d} done now, {s} skipped (already done), {f} failed"
SPEC = """
analyses = ["activation_spectra", "weight_spectra"]
prompts = [{prompts}]
batch_size = 2
max_tokens = 48

[[models]]
glob = "ckpts/step-*"

[grid.activation_spectra]
sites = [["blocks.*.hook_resid_post"]]
n_values = {n_values}
"""


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    """Three tiny checkpoints, a prompt file and the specs: ``many.toml`` (39 quick cells, so a driver killed after
    the first is killed mid-sweep) and ``few.toml`` (12 cells)."""
    root = tmp_path_factory.mktemp("faults")
    make_checkpoints(root, (0, 10, 20))
    (root / "short.txt").write_text(SHORT_PROMPTS)
    (root / "many.toml").write_text(SPEC.format(prompts='"short.txt", "bundled:dialogue"', n_values=[4, 5, 6, 7, 8, 9]))
    (root / "few.toml").write_text(SPEC.format(prompts='"short.txt"', n_values=[4, 5, 6]))
    return root


@pytest.fixture
def ray_tmp(monkeypatch):
    """A private RAY_TMPDIR (short: Ray's socket paths must fit in 107 characters). On teardown every process of
    this test's Ray (its command line names the folder, or it descends from one that does, or it is in a session
    the test registered in ``sessions``) is killed, and the test fails if any had outlived the test's own cleanup."""
    root = Path(tempfile.mkdtemp(prefix="wbrt-", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    sessions: list[int] = []
    yield root, sessions
    survivors = _describe(_ours(root, sessions))
    _kill(_ours(root, sessions))
    shutil.rmtree(root, ignore_errors=True)
    assert not survivors, f"Ray processes outlived the test: {survivors}"


# --- 1. the driver -----------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_driver_sigkill_then_rerun_runs_every_cell_once(fault_dir, ray_tmp):
    """``kill -9`` of the driver alone (its Ray and the workers left to notice), after some cells are done and while
    others run; the re-run skips the done cells, runs the rest, and every cell is done once."""
    root, sessions = ray_tmp
    spec, out = fault_dir / "many.toml", fault_dir / "drv"
    cells = load_spec(spec).cells
    command = [sys.executable, "-m", "workbench", "sweep", str(spec), "--out", str(out), "--max-parallel", "2"]
    env = os.environ | {"PYTHONPATH": ""}
    driver = subprocess.Popen(command, cwd=fault_dir, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    sessions.append(driver.pid)
    try:
        while not _done(out):
            assert driver.poll() is None, f"the sweep ended before any cell was done: {driver.stderr.read()}"
            time.sleep(0.02)
        procs = _ours(root, sessions)
        open_ports = _non_loopback_listeners(procs)
        os.kill(driver.pid, signal.SIGKILL)
        killed = time.monotonic()
        driver.wait(timeout=30)
        done_at_kill = len(_done(out))
    finally:
        driver.kill()
        driver.stderr.close()
    assert 1 <= done_at_kill < len(cells), f"the kill came after the sweep: {done_at_kill} of {len(cells)} done"
    assert _has_ray(procs) and open_ports == [], f"Ray listens beyond loopback: {open_ports}"
    # Ray's processes notice that their driver is gone (fate-sharing), all but two agents within seconds
    left = _wait_gone(root, sessions, 30, ignore=("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
    print(f"driver killed with {done_at_kill}/{len(cells)} cells done; {time.monotonic() - killed:.1f} s later "
          f"left: {left + _describe(_ours(root, sessions))}")
    assert not left, f"Ray processes outlived their driver: {left}"
    _kill(_ours(root, sessions))  # the agents, which exit by themselves a minute or two later

    started = time.monotonic()
    rerun = subprocess.Popen(command, cwd=fault_dir, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    sessions.append(rerun.pid)  # the teardown checks that its Ray is gone too
    try:
        stdout, stderr = rerun.communicate(timeout=240)
    finally:
        rerun.kill()
    assert rerun.returncode == 0, stdout + stderr
    last = stdout.splitlines()[-1]
    print(f"re-run: {time.monotonic() - started:.0f} s; {last}")
    skipped = int(last.split(" done now, ")[1].split()[0])
    assert last == SUMMARY.format(n=len(cells), d=len(cells) - skipped, s=skipped, f=0)
    assert skipped >= done_at_kill >= 1
    _assert_done_once(out, cells)
    log = (out / LOG_NAME).read_text()
    assert all(log.count(f" cell done {c.id} ") <= 1 for c in cells)  # no cell ran to its record twice


# --- 2. a worker -------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_worker_sigkill_mid_cell_is_retried_by_ray(fault_dir, ray_tmp):
    """A worker kills itself (SIGKILL) inside its first cell's folder write, the worst moment: the cell computed, its
    temporary folder filled, not yet renamed into place. Ray restarts the actor and re-runs the cell; the sweep ends
    with every cell done once and no temporary folder left."""
    import ray

    root, _ = ray_tmp
    spec, out, marker = fault_dir / "few.toml", fault_dir / "wrk", fault_dir / "killed"
    cells = load_spec(spec).cells
    started = time.monotonic()
    try:
        _init_local(ray, {fault_hooks.KILL_ENV: str(marker)})
        summary = run_sweep(load_spec(spec), out, max_parallel=2, progress=False)
        procs = _ours(root, [])
        open_ports = _non_loopback_listeners(procs)
    finally:
        ray.shutdown()
    print(f"worker-kill sweep: {time.monotonic() - started:.0f} s; {summary.line()}")
    assert summary.line() == SUMMARY.format(n=len(cells), d=len(cells), s=0, f=0)
    assert _has_ray(procs) and open_ports == [], f"Ray listens beyond loopback: {open_ports}"
    pid, killed_cell = marker.read_text().split()
    assert killed_cell in {c.id for c in cells}
    _assert_done_once(out, cells)
    line = [x for x in (out / LOG_NAME).read_text().splitlines() if f" cell done {killed_cell} " in x]
    assert len(line) == 1 and f" worker {pid} " not in line[0] + " "  # re-run by the restarted worker


# --- 3. nodes ----------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_node_loss_mid_sweep_completes(fault_dir, ray_tmp, monkeypatch):
    """A cluster of three one-CPU raylets on 127.0.0.1 and two workers. First a node with a worker is removed while
    it runs a cell: Ray restarts the worker on the spare node and re-runs the cell. Then the other node with a worker
    is removed: no node has a free CPU, so Ray would wait for one forever; the driver gives the worker up and the
    survivor runs its cell. Every cell done once."""
    import ray
    from ray._private import state
    from ray.cluster_utils import Cluster

    from workbench.sweeps import execute

    root, _ = ray_tmp
    monkeypatch.setattr(execute, "STRANDED_S", 4.0)
    monkeypatch.setattr(execute, "POLL_S", 0.5)
    spec, out = fault_dir / "many.toml", fault_dir / "nodes"
    cells = load_spec(spec).cells
    events: list[str] = []
    cluster = None

    def actors_by_node() -> dict[str, list[dict]]:
        table = [a for a in state.actors().values() if a.get("ActorClassName", "").endswith("CellWorker")]
        by_node: dict[str, list[dict]] = {}
        for a in table:
            if a["State"] == "ALIVE":
                by_node.setdefault(a["Address"]["NodeID"], []).append(a)
        return by_node

    def wait_for(condition, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            time.sleep(0.05)

    def remove(node, why: str) -> None:
        done = len(_done(out))
        assert done < len(cells) - 4, f"too late to remove a node ({why}): {done} of {len(cells)} cells done"
        cluster.remove_node(node)
        events.append(f"removed a node ({why}) with {done} cells done")

    def faults(workers: list) -> None:
        try:
            wait_for(lambda: len(_done(out)) >= 1, "a first cell")
            on = actors_by_node()
            first = next(n for n in workers if n.node_id in on)
            restarted = on[first.node_id][0]["ActorID"]
            remove(first, "the spare node has room")
            workers.remove(first)
            wait_for(lambda: state.actors(restarted)["State"] == "ALIVE", "the worker restarted elsewhere")
            seen = len(_done(out))
            wait_for(lambda: len(_done(out)) >= seen + 2, "two more cells")
            (second,) = workers
            assert second.node_id in actors_by_node(), "the last worker node runs no worker"
            remove(second, "no node has room")
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            events.append(f"error: {type(exc).__name__}: {exc}")

    started = time.monotonic()
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                                "node_ip_address": "127.0.0.1"})
        workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=_hooks({fault_hooks.DELAY_ENV: "0.4"}))
        procs = _ours(root, [])
        open_ports = _non_loopback_listeners(procs)
        thread = threading.Thread(target=faults, args=(workers,), daemon=True)
        thread.start()
        summary = run_sweep(load_spec(spec), out, address=cluster.address, max_parallel=2, progress=False)
        thread.join(timeout=60)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    print(f"node-loss sweep: {time.monotonic() - started:.0f} s; " + "; ".join(events))
    assert not [e for e in events if e.startswith("error")], events
    assert len(events) == 2
    assert _has_ray(procs) and open_ports == [], f"Ray listens beyond loopback: {open_ports}"
    assert summary.line() == SUMMARY.format(n=len(cells), d=len(cells), s=0, f=0)
    _assert_done_once(out, cells)
    log = (out / LOG_NAME).read_text()
    assert log.count("giving it up") == 1


# --- helpers -----------------------------------------------------------------------------------------------------------

def _hooks(env: dict[str, str]) -> dict:
    """A runtime_env that runs fault_hooks.setup in every worker, configured by ``env``."""
    return {"worker_process_setup_hook": "tests.workbench.sweeps.fault_hooks.setup",
            "env_vars": env | {"PYTHONPATH": str(ROOT)}}


def _init_local(ray, env: dict[str, str]) -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env=_hooks(env))


def _done(out: Path) -> list[str]:
    """Ids of the cells whose folder says done."""
    found = []
    for path in (out / "cells").glob("*/cell.json"):
        try:
            if json.loads(path.read_text())["status"] == "done":
                found.append(path.parent.name)
        except (OSError, ValueError, KeyError):
            pass
    return found


def _assert_done_once(out: Path, cells) -> None:
    """One folder per cell and nothing else (no temporary or half-written folder), each done; the database holds each
    cell once with exactly the metrics its cell.json holds."""
    ids = sorted(c.id for c in cells)
    assert sorted(p.name for p in (out / "cells").iterdir()) == ids
    records = {i: json.loads((out / "cells" / i / "cell.json").read_text()) for i in ids}
    assert all(r["status"] == "done" and r["metrics"] for r in records.values())
    assert all((out / "cells" / i / "report.json").is_file() for i in ids)
    store = open_store(out)
    rows = store.query("SELECT id, count(*) AS n FROM cells GROUP BY id")
    assert sorted(rows.id) == ids and set(rows.n) == {1}
    counts = store.query("SELECT cell, count(*) AS n FROM metrics GROUP BY cell")
    assert dict(zip(counts.cell, counts.n)) == {i: len(r["metrics"]) for i, r in records.items()}
    dupes = store.query("SELECT cell, metric, layer, site, count(*) AS n FROM metrics GROUP BY ALL HAVING n > 1")
    assert dupes.empty, dupes


def _processes() -> dict[int, tuple[int, int, str, str]]:
    """Every process now: pid -> (parent pid, session id, state, command line)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        table[int(name)] = (int(stat[1]), int(stat[3]), stat[0], command)
    return table


def _ours(root: Path, sessions) -> dict[int, str]:
    """This test's Ray processes still running (zombies are gone): pid -> command line."""
    table = _processes()
    mine = {p for p, (_, sid, _, cmd) in table.items() if str(root) in cmd or sid in sessions}
    while grown := {p for p, (ppid, *_) in table.items() if ppid in mine and p not in mine}:
        mine |= grown
    mine.discard(os.getpid())
    return {p: table[p][3] for p in mine if table[p][2] != "Z"}


def _has_ray(procs: dict[int, str]) -> bool:
    """The processes include Ray's control store and a raylet (so the checks on them looked at something)."""
    return any("gcs_server" in cmd for cmd in procs.values()) and any("raylet" in cmd for cmd in procs.values())


def _describe(procs: dict[int, str]) -> list[str]:
    return [f"{pid} {cmd[:80]}" for pid, cmd in sorted(procs.items())]


def _wait_gone(root: Path, sessions, seconds: float, ignore=()) -> list[str]:
    """Wait up to ``seconds`` for this test's Ray (but the processes named in ``ignore``) to exit; what is left."""
    deadline = time.monotonic() + seconds

    def left() -> dict[int, str]:
        return {p: c for p, c in _ours(root, sessions).items() if not c.startswith(tuple(ignore)) or not ignore}

    while (still := left()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _describe(still)


def _kill(procs: dict[int, str]) -> None:
    for pid in procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and _processes().get(pid, (0, 0, "Z"))[2] != "Z" for pid in procs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)


_LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _non_loopback_listeners(procs: dict[int, str]) -> list[str]:
    """Listening TCP sockets of ``procs`` bound to anything but 127.0.0.1 / ::1 (from /proc/net/tcp{,6})."""
    inodes = {}
    for pid in procs:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes[int(link[8:-1])] = pid
        except OSError:
            continue
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and int(fields[9]) in inodes and address not in _LOOPBACK:
                pid = inodes[int(fields[9])]
                found.append(f"{procs[pid][:40]} (pid {pid}) on {table} {address}:{int(port, 16)}")
    return found
