"""The child side of the SIGKILL tests: one job (write one artefact) in a fresh interpreter, killed with SIGKILL at a
chosen point.

Points are file-system events under the run's root folder seen by a :func:`sys.addaudithook` hook: every open for
writing, mkdir, mkdtemp, chmod, rename, remove and rmtree. ``kill_at=N`` kills the process just before its N-th
event (SIGKILL: no ``finally``, no atexit); ``kill_at=0`` completes and writes the event count to ``count_file``
(and the events, one a line, to ``count_file.log``). The points are deterministic (the same job makes the same events), so a loaded machine changes
nothing but the time.

Run as ``python -c "from tests.faults.child import main; main()"`` from the repository root: a fork server that
imports everything once and forks one process per run (an interpreter per run costs 8-15 s on a busy 2-core machine).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

_EVENTS = {"os.mkdir", "tempfile.mkdtemp", "os.chmod", "os.rename", "os.remove", "shutil.rmtree"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _is_write(args: tuple) -> bool:
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return bool(isinstance(flags, int) and flags & _WRITE_FLAGS)


_STATE: dict = {"kill_at": 0, "seen": 0, "log": []}


def install(root: str) -> None:
    """Count (and kill at ``_STATE["kill_at"]``) the file-system events under ``root``."""
    root = os.path.abspath(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if not _is_write(args):
                return
        elif event not in _EVENTS:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        if not os.path.abspath(os.fsdecode(path)).startswith(root):
            return
        _STATE["seen"] += 1
        _STATE["log"].append(f"{event} {os.path.relpath(os.fsdecode(path), root)}")
        if _STATE["seen"] == _STATE["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def job_sae(root: Path) -> None:
    import torch

    from workbench.sae.training import cached_sae

    torch.manual_seed(0)
    z = torch.randn(64, 8)
    trained = cached_sae(z, key={"faults": "sae"}, cache_dir=root / "sae", d_sae=16, k=4, epochs=2, batch_size=32)
    result = {"path": str(trained.path), "fvu": trained.fvu, "history": list(trained.history)}
    (root.parent / f"sae-{os.getpid()}.json").write_text(json.dumps(result))


def job_edits(root: Path) -> None:
    import torch

    from workbench.intervene.edit import ComponentEdit, save_edits

    torch.manual_seed(0)
    edits = [ComponentEdit("head", 0, 1, 0.5, 0.1, torch.randn(32), torch.randn(8)),
             ComponentEdit("neuron", 1, 3, -0.25, 0.2, torch.randn(32), None)]
    save_edits(edits, root / "out" / "edits")


def job_model(root: Path) -> None:
    """``ensure_converted`` of a bundled source whose GGUF conversion is replaced by a stand-in (the real one,
    :func:`job_bundled`, takes about 20 s a run): what is under test is finding a whole cached folder (its manifest
    verified) or rebuilding it, the atomic build, and racers converting once."""
    from workbench.models import bundled

    def fake_conversion(source: bundled.BundledSource, tmp: Path) -> dict[str, object]:
        """Stands in for the GGUF conversion: the same kinds of files, several writes each (and one line a
        conversion in ``conversions.log`` beside the root, outside the audited folder)."""
        with open(root.parent / "conversions.log", "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # a conversion takes time: a racer arrives while it runs
        (tmp / "config.json").write_text(json.dumps({"model_type": "llama"}))
        for i in range(3):
            with open(tmp / f"model-0000{i}.safetensors", "wb") as handle:
                for block in range(4):
                    handle.write(bytes([i * 4 + block]) * 4096)
        (tmp / "tokenizer.json").write_text("{}")
        return {"source": source.name}

    os.environ["WORKBENCH_CACHE"] = str(root)
    bundled._convert = fake_conversion
    source = bundled.BundledSource(name="fake", description="a fake source", package="json", module="json",
                                   gguf_file="__init__.py", license="none")
    bundled.ensure_converted(source)


def job_bundled(root: Path) -> None:
    """The real thing: ``ensure_converted`` of the bundled SmolLM2-135M (its GGUF dequantised and saved as a 538 MB
    float32 folder, about 20 s) into a cache under ``root``."""
    from workbench.models import bundled

    os.environ["WORKBENCH_CACHE"] = str(root)
    bundled.ensure_converted(bundled.get_bundled("smollm2-135m"))


def job_report(root: Path, model: str, prompts: str, *extra: str) -> None:
    sys.argv = ["workbench", "report", "--model", model, "--prompts", prompts,
                "--analyses", "rankme", "--sites", "blocks.*.hook_resid_post", "--max-tokens", "64",
                "--out", str(root / "out" / "report"), *extra]
    from workbench.cli import app

    app()


def _prepare() -> None:
    """Import what the jobs need once, in the server, so that each forked run only works and writes."""
    import sae_lens  # noqa: F401
    import torch
    import transformer_lens  # noqa: F401

    import workbench.cli  # noqa: F401
    import workbench.intervene.edit  # noqa: F401
    import workbench.models.bundled  # noqa: F401
    import workbench.runner  # noqa: F401
    import workbench.sae.training  # noqa: F401

    torch.set_num_threads(1)


_JOBS = {"sae": job_sae, "edits": job_edits, "model": job_model, "bundled": job_bundled, "report": job_report}


def _kill_at_offset(root: str, offset: int, report: Path) -> None:
    """SIGKILL this process once a file under ``root`` open in it has its position at byte ``offset`` or beyond:
    inside a write that no audit event marks (safetensors writes its weights from Rust, by ``write(2)`` in 16 MiB
    blocks after sizing the file; the GIL is released meanwhile, so a thread watching ``/proc/self/fdinfo`` sees the
    position move). Before the kill, ``report`` gets the file's path and position."""
    import threading

    root = os.path.realpath(root)

    def watch() -> None:
        while True:
            for fd in os.listdir("/proc/self/fd"):
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                    if not path.startswith(root):
                        continue
                    with open(f"/proc/self/fdinfo/{fd}") as info:
                        position = int(info.readline().split()[1])  # the first line is "pos:\t<offset>"
                except (OSError, ValueError, IndexError):
                    continue
                if position >= offset:
                    report.write_text(f"{path}\n{position}\n")
                    os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.002)

    threading.Thread(target=watch, daemon=True).start()


def _child(request: dict, go: Path | None) -> None:
    """The forked child: wait for ``go`` (a barrier, when racing), run the job killed at its kill_at-th event under
    the root (0: never), write the event count; never returns."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        log = os.open(Path(request["root"]).parent / f"{os.getpid()}.err", os.O_WRONLY | os.O_CREAT, 0o644)
        os.dup2(log, 2)
        while go is not None and not go.exists():
            time.sleep(0.001)
        install(request["root"])
        _STATE.update(kill_at=request["kill_at"], seen=0, log=[])
        if request.get("kill_at_offset"):
            _kill_at_offset(request["root"], request["kill_at_offset"], Path(request["count_file"] + ".offset"))
        try:
            _JOBS[request["job"]](Path(request["root"]), *request["args"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        Path(request["count_file"]).write_text(str(_STATE["seen"]))
        Path(request["count_file"] + ".log").write_text("\n".join(_STATE["log"]) + "\n")  # the events, in order
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _serve(request: dict) -> list[tuple[int, int]]:
    """Fork one run (or two at once, for ``"race": true``, released together by a barrier file); wait for them."""
    go = Path(request["root"]).parent / "go" if request.get("race") else None
    pids = []
    for _ in range(2 if go else 1):
        pid = os.fork()
        if pid == 0:
            _child(request, go)
        pids.append(pid)
    if go:
        go.touch()
    done = [(pid, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])) for pid in pids]
    if go:
        go.unlink()
    return done


def main() -> None:
    """A fork server: read requests from stdin (one JSON object a line: job, root, args, kill_at (0: run to the
    end), count_file, race, kill_at_offset (optional: also killed once a file under the root is written up to that byte)), run each in a forked child killed at that point (two at once for a race), answer
    ``<child pid> <exit code>`` per child (``-9``: killed) on stdout. A child's stderr goes to ``<pid>.err`` beside
    the root."""
    _prepare()
    print("ready", flush=True)
    for line in sys.stdin:
        print(" ".join(f"{pid} {code}" for pid, code in _serve(json.loads(line))), flush=True)
