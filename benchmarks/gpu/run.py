"""The prepared GPU check: one command on a lent GPU machine runs the fast test suite there and times the library on
CUDA against the same machine's CPU. Standard library only (it runs before anything is installed).

Here, once, with network (downloads the wheels the GPU image lacks and copies the model files)::

    .venv/bin/python benchmarks/gpu/run.py --prepare

There, through the device tool (``run`` with ``carry: [".whl", ".gpu-model"]``)::

    python3 benchmarks/gpu/run.py --out $OUT

Here, as a dry run of the whole flow on the CPU (tests/benchmarks/test_gpu_check.py runs it)::

    .venv/bin/python benchmarks/gpu/run.py --device cpu --quick --out /tmp/gpu-dry --site /tmp/gpu-site

``--prepare`` downloads ``wheels.txt`` (``--no-deps``, cp312 manylinux x86_64, one version each) into ``.whl/``, drops
any other wheel there, copies SmolLM2-135M's ``config.json`` and tokenizer files from the cached conversion into
``.gpu-model/smollm2-135m/`` and fails loudly when the working tree plus both folders would exceed the device tool's
64 MiB. The run mode installs the wheels into ``--site`` (``pip install --no-index --no-deps --target``), adds a
``.dist-info`` for this checkout there (so the ``workbench.analyses`` entry points resolve without installing it),
runs the fast suite with ``WORKBENCH_TEST_DEVICE`` set, then ``bench.py`` (capture overhead, batched SVD/eigvalsh,
weight spectra, ERV/ERA) on a random-weight model of SmolLM2-135M's exact shape, and writes at most 8 files to
``--out``: summary.md, env.json, tests.log, bench.log and bench_<name>.json for each of the four benchmarks. A wall-clock budget (``--budget``,
default 420 s) keeps the whole command inside the tool's 10 minutes: the tests get what the benchmarks leave.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WHEELS = ROOT / ".whl"
MODEL_DIR = ROOT / ".gpu-model"
MODEL_NAME = "smollm2-135m"
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")
LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the working tree plus carried paths
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# Test modules that import at collection time a package the GPU image lacks and we do not carry (too large:
# streamlit with its server stack, playwright with a browser driver; sae-lens brings wandb, pydantic, nltk).
# They are ignored there when the package cannot be imported; tests that import one lazily are skipped by
# pytest_absent.py with the same reason.
NEEDS = {"tests/app": ("streamlit", "playwright")}
ABSENT_CANDIDATES = ("streamlit", "playwright", "sae_lens", "gguf", "captum", "plotly")
QUICK_TESTS = ("tests/workbench/spectra/test_checks.py", "tests/workbench/test_device.py")
BENCH_SHARE = 0.4  # of the budget kept for bench.py, whatever the tests take


def requirements() -> list[str]:
    """``name==version`` lines of wheels.txt (comments dropped)."""
    lines = (HERE / "wheels.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_key(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel file name."""
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def cache_root() -> Path:
    """workbench.models.cache.cache_root without importing workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench")


def tree_bytes() -> int:
    """Bytes of what the device tool sends besides carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / n).stat().st_size for n in listed if n and (ROOT / n).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


# ---------------------------------------------------------------------------------------------------------------------
# --prepare (here)


def download(wheels: Path = WHEELS) -> list[Path]:
    """Download wheels.txt into ``wheels`` and delete every other wheel there; one wheel per requirement."""
    wheels.mkdir(exist_ok=True)
    reqs = requirements()
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(wheels), *reqs]
    subprocess.run(cmd, check=True)
    wanted = {(normalise(r.split("==")[0]), r.split("==")[1]) for r in reqs}
    kept = []
    for path in sorted(wheels.glob("*.whl")):
        if wheel_key(path) in wanted:
            kept.append(path)
        else:
            path.unlink()  # another version or a package no longer listed: two versions stop the install there
    missing = wanted - {wheel_key(p) for p in kept}
    if missing:
        raise SystemExit(f"--prepare: no wheel for {sorted(missing)} in {wheels}")
    return kept


def copy_model_files(target: Path = MODEL_DIR, source: Path | None = None) -> Path:
    """Copy SmolLM2-135M's config and tokenizer files (not the weights) from the cached conversion."""
    source = source or cache_root() / "models" / MODEL_NAME
    if not (source / "config.json").is_file():
        raise SystemExit(f"--prepare: {source / 'config.json'} is missing: convert the bundled model once "
                         f"(.venv/bin/python -c 'import workbench; workbench.load_model()') and run again")
    dest = target / MODEL_NAME
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    return dest


def check_size(wheels: Path = WHEELS, model: Path = MODEL_DIR) -> int:
    """Print what travels; exit non-zero when it exceeds the device tool's 64 MiB."""
    parts = {"working tree (tracked + untracked, not ignored)": tree_bytes(), str(wheels.relative_to(ROOT)):
             folder_bytes(wheels), str(model.relative_to(ROOT)): folder_bytes(model)}
    for name, size in parts.items():
        print(f"  {size / 2**20:7.2f} MiB  {name}")
    total = sum(parts.values())
    print(f"  {total / 2**20:7.2f} MiB  in all (limit {LIMIT_BYTES / 2**20:.0f} MiB)")
    if total >= LIMIT_BYTES:
        print(f"ERROR: {total / 2**20:.1f} MiB would travel, over the device tool's {LIMIT_BYTES / 2**20:.0f} MiB "
              "limit: carry fewer wheels (wheels.txt) or shrink the working tree", file=sys.stderr)
        return 1
    return 0


def prepare() -> int:
    kept = download()
    for path in kept:
        print(f"  {path.stat().st_size / 2**20:7.2f} MiB  {path.name}")
    print(f"  {sum(p.stat().st_size for p in kept) / 2**20:7.2f} MiB  {len(kept)} wheels in {WHEELS}")
    dest = copy_model_files()
    print(f"model files: {', '.join(sorted(p.name for p in dest.iterdir()))} in {dest}")
    code = check_size()
    if code == 0:
        print('\nnext: the device tool\'s run with command "python3 benchmarks/gpu/run.py --out $OUT", '
              'carry [".whl", ".gpu-model"], timeout_s 480')
    return code


# ---------------------------------------------------------------------------------------------------------------------
# run mode (there)


def compatible(wheels: list[Path]) -> tuple[list[Path], list[Path]]:
    """Wheels this interpreter can install, and the others (a cp312-only wheel in a dry run on 3.11, say)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip vendors packaging, but it is no public API: assume every wheel fits
        return wheels, []
    tags = set(sys_tags())
    ok = [w for w in wheels if parse_wheel_filename(w.name)[3] & tags]
    return ok, [w for w in wheels if w not in ok]


def install(site: Path, wheels: Path, log: list[str]) -> None:
    """pip install the carried wheels into ``site`` (offline), as the device README's one-liner does."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    ok, skipped = compatible(found)
    for w in skipped:
        log.append(f"- not installed (not for this interpreter): {w.name}")
    if ok:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, ok)], check=True)
    log.append(f"- installed {len(ok)} wheels from {wheels} into {site}" if ok else f"- no wheels installed ({wheels})")


def link_checkout(site: Path) -> None:
    """Make this checkout importable from ``site`` as pip would install it: ``workbench_analyses`` and
    ``workbench_app`` (the folders analyses/ and app/) and a ``.dist-info`` whose entry points are pyproject.toml's,
    so the registry finds the built-in analyses without building or installing the package."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for name, folder in (("workbench_analyses", "analyses"), ("workbench_app", "app")):  # workbench: ROOT on the path
        link = site / name
        if link.is_symlink() or link.exists():
            if link.is_symlink():
                link.unlink()
            else:
                shutil.rmtree(link)
        link.symlink_to(ROOT / folder, target_is_directory=True)
    name = normalise(project["name"])
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"{name}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n",
                                   encoding="utf-8")
    sections = [("console_scripts", project.get("scripts", {}))] + list(project.get("entry-points", {}).items())
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n" for group, entries in sections),
        encoding="utf-8")
    (info / "top_level.txt").write_text("workbench\nworkbench_analyses\nworkbench_app\n", encoding="utf-8")


def child_env(site: Path, device: str, absent: list[str]) -> dict[str, str]:
    paths = [str(site), str(HERE), str(ROOT)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), WORKBENCH_TEST_DEVICE=device,
                WORKBENCH_TEST_ABSENT=",".join(absent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")


def absent_modules(env: dict[str, str]) -> list[str]:
    """Which optional packages the child interpreter cannot import (finds specs only: imports nothing)."""
    probe = ("import importlib.util, sys; print(','.join(m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None))")
    out = subprocess.run([sys.executable, "-c", probe, *ABSENT_CANDIDATES], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    return [m for m in out.split(",") if m]


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, output to ``log_path`` and echoed; kill the group after ``timeout`` s.
    Returns (exit code or None when killed, the last lines of output)."""
    tail: list[str] = []
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True)
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        killed = False
        while True:
            line = proc.stdout.readline()
            if line:
                log.write(line)
                print(line, end="", flush=True)
                tail = (tail + [line.rstrip()])[-40:]
                continue
            if proc.poll() is not None:
                rest = proc.stdout.read() or ""
                log.write(rest)
                print(rest, end="", flush=True)
                tail = (tail + rest.splitlines())[-40:]
                break
            if time.monotonic() > deadline and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                msg = f"\n[run.py] killed after {timeout:.0f} s (budget)\n"
                log.write(msg)
                print(msg, end="", flush=True)
                tail.append(msg.strip())
            time.sleep(0.05)
    return (None if killed else proc.returncode), "\n".join(tail)


def pytest_command(absent: list[str], *, workers: int, quick: bool) -> list[str]:
    """The fast suite (or, ``quick``, two modules), with the modules of ``absent`` packages ignored."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-p", "pytest_absent",
           "-o", "timeout=300", "-rfEs"]
    for path, needs in NEEDS.items():
        if any(m in absent for m in needs):
            cmd.append(f"--ignore={path}")
    if workers > 1:
        cmd += ["-n", str(workers)]
    cmd += list(QUICK_TESTS) if quick else ["tests"]
    return cmd


def has_xdist(env: dict[str, str]) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('xdist') is None)"
    return subprocess.run([sys.executable, "-c", probe], env=env).returncode == 0


def summarise(out: Path, lines: list[str]) -> None:
    """summary.md: the run's notes, the test outcome and each benchmark's table."""
    parts = ["# GPU check", "", *lines, ""]
    env_file = out / "env.json"
    if env_file.is_file():
        env = json.loads(env_file.read_text(encoding="utf-8"))
        parts += ["## Machine", "", *[f"- {k}: {v}" for k, v in env.items()], ""]
    for path in sorted(out.glob("bench_*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        parts += [f"## {data.get('title', path.stem)}", "", *data.get("lines", []), ""]
    (out / "summary.md").write_text("\n".join(parts), encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    site = Path(args.site).resolve()
    site.mkdir(parents=True, exist_ok=True)
    notes: list[str] = [f"- command: {' '.join(sys.argv)}"]
    if not args.no_install:
        install(site, Path(args.wheels).resolve(), notes)
    link_checkout(site)
    env = child_env(site, args.device, [])
    absent = absent_modules(env)
    env = child_env(site, args.device, absent)
    notes.append(f"- device {args.device}; packages not importable here (their tests are skipped): "
                 f"{', '.join(absent) or 'none'}")
    ok = True
    if not args.no_tests:
        workers = args.workers if has_xdist(env) else 1
        left = args.budget - (time.monotonic() - started)
        timeout = max(30.0, left * (1 - BENCH_SHARE)) if not args.no_bench else max(30.0, left)
        code, tail = run_logged(pytest_command(absent, workers=workers, quick=args.quick), env, out / "tests.log",
                                timeout)
        last = [line for line in tail.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", line)]
        notes.append(f"- tests ({workers} workers, {timeout:.0f} s allowed): "
                     f"{'killed at the budget' if code is None else f'exit code {code}'}; "
                     f"{last[-1].strip('= ') if last else 'no summary line'}")
        ok &= code == 0
    if not args.no_bench:
        left = args.budget - (time.monotonic() - started)
        cmd = [sys.executable, str(HERE / "bench.py"), "--device", args.device, "--out", str(out), "--model-dir",
               str(Path(args.model_dir).resolve()), "--budget", f"{max(30.0, left - 10):.0f}"]
        code, _ = run_logged(cmd + (["--quick"] if args.quick else []), env, out / "bench.log", max(40.0, left))
        notes.append(f"- benchmarks: {'killed at the budget' if code is None else f'exit code {code}'}")
        ok &= code == 0
    notes.append(f"- wall time {time.monotonic() - started:.0f} s")
    summarise(out, notes)
    print((out / "summary.md").read_text(encoding="utf-8"))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="here: download the wheels and copy the model files")
    parser.add_argument("--out", help="folder for the results (run mode)")
    parser.add_argument("--device", default="cuda", help="device of the tests and benchmarks (default cuda)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: two test modules, tiny benchmark sizes")
    parser.add_argument("--site", default="/tmp/site", help="target folder of the wheel install (default /tmp/site)")
    parser.add_argument("--wheels", default=str(WHEELS), help="folder of the carried wheels (default .whl)")
    parser.add_argument("--model-dir", default=str(MODEL_DIR / MODEL_NAME),
                        help="config.json + tokenizer of the benchmark model (default .gpu-model/smollm2-135m)")
    parser.add_argument("--no-install", action="store_true", help="use the packages importable already")
    parser.add_argument("--no-tests", action="store_true", help="skip the test suite")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmarks")
    parser.add_argument("--workers", type=int, default=8, help="pytest-xdist workers when xdist is there (default 8)")
    parser.add_argument("--budget", type=float, default=420.0, help="wall-clock seconds for everything (default 420)")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare()
    if not args.out:
        parser.error("--out is required (or --prepare)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
