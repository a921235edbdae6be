"""Shared helpers of the benchmark scripts: prompts, best-of-N timing, RSS readings, output format.

Threads are left at torch's default (``torch.set_num_threads`` is never called) so the numbers are what a user of
the library gets on the same machine. Every script prints a short table and ends with one line::

    RESULT <name> ratio=<x> target=<y> PASS|MISS
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in the output

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "workbench" / "data" / "default_prompts.jsonl"
SETTLE_S = 0.3  # pause before each timed call (see times_interleaved)


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant, best kept (default 3)")
    return parser.parse_args(argv)


def default_prompts(n: int | None = None) -> list[str]:
    """The first ``n`` texts of ``workbench/data/default_prompts.jsonl`` (all of them when ``n`` is None)."""
    with PROMPTS.open(encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle if line.strip()]
    return texts if n is None else texts[:n]


def cycled_prompts(times: int) -> list[str]:
    """The default prompts repeated ``times`` times (for token counts beyond what the file holds)."""
    return default_prompts() * times


def load_model():
    """The bundled model, timed (prints one line)."""
    import workbench

    started = time.perf_counter()
    lm = workbench.load_model()
    print(f"loaded {lm.name} in {time.perf_counter() - started:.1f} s")
    return lm


def best_of(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return best_of_interleaved({"_": fn}, repeats, warmup)["_"]


def best_of_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3,
                        warmup: int = 1) -> dict[str, float]:
    """Best seconds of each function, timed round-robin (see :func:`times_interleaved`)."""
    return {name: min(times) for name, times in times_interleaved(fns, repeats, warmup).items()}


def times_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3,
                      warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of ``repeats`` calls of each function, timed round-robin with the order rotated each round
    (a, b, c, b, c, a, ...) so that slow drifts of a noisy machine hit every variant alike. Each gets ``warmup``
    untimed calls first; ``gc.collect`` and a pause of ``SETTLE_S`` run before each timed call: BLAS/OpenMP worker
    threads spin-wait for up to ~0.1 s after a call (OpenBLAS' for scipy, OpenMP's for torch), and on a 2-core
    machine a spinning pool of one library would otherwise steal the CPUs from the next variant."""
    for _ in range(warmup):
        for fn in fns.values():
            gc.collect()
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate: no variant always runs first
            fn = fns[name]
            gc.collect()
            time.sleep(SETTLE_S)
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def load_note() -> str:
    """The 1-minute load average against the CPU count: other work on the machine makes every timing noisy."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Resident set size now (``VmRSS`` from /proc/self/status), in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Highest ``VmRSS`` seen by a background thread polling every ``interval`` seconds (torch releases the GIL in
    its kernels, so the thread keeps sampling during a forward). Used as a context manager; reads no kernel peak
    counter, so ``ru_maxrss`` stays the untouched process peak."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = current_rss_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mib())


def run_child(script: str, *args: object) -> dict:
    """Run ``script --child *args`` in a fresh interpreter (so its RSS readings start clean) and return the JSON object
    on its last stdout line; a failed child stops the benchmark with its stderr."""
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--child", *map(str, args)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {' '.join(map(str, args))} of {Path(script).name} failed with exit code "
                         f"{proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def result(name: str, ratio: float, target: float, *, below: bool = False) -> bool:
    """Print the final ``RESULT`` line. PASS when ``ratio <= target`` (or ``ratio < target`` with ``below``)."""
    ok = ratio < target if below else ratio <= target
    print(f"RESULT {name} ratio={ratio:.3f} target={target:g} {'PASS' if ok else 'MISS'}")
    sys.stdout.flush()
    return ok
