"""Run every benchmark in sequence, each in its own subprocess (so RSS readings start clean), then summarise.

    python benchmarks/run_all.py            # full sizes
    python benchmarks/run_all.py --quick    # smoke run

Each script's output is streamed as it runs; the summary repeats their ``RESULT`` lines. Exit status: 0 when every
script ran (whether its target was met or not: a MISS is a measurement, not a crash), 1 when a script failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_capture_overhead.py", "bench_batched_spectra.py", "bench_capture_memory.py", "bench_readout.py",
           "bench_gradient_spectra.py", "bench_generate.py", "bench_sae_features.py")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs, from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def foreign_cpu_note(busy0: float, ours0: float, wall: float) -> str:
    """How much CPU other processes took while a script ran: timings are only as good as the machine is quiet."""
    foreign = max((busy_cpu_seconds() - busy0) - (children_cpu_seconds() - ours0), 0.0)
    return (f"other processes used {foreign:.0f} CPU-s during it ({foreign / (wall * (os.cpu_count() or 1)):.0%} of "
            f"the machine){'; timings are disturbed' if foreign > 0.05 * wall * (os.cpu_count() or 1) else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", nargs="*", default=None, help="run only these scripts (file names)")
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, {'quick' if args.quick else 'full'} run", flush=True)
    results, failed = [], []
    started = time.perf_counter()
    for script in args.only or SCRIPTS:
        print(f"\n=== {script}{' --quick' if args.quick else ''} ===", flush=True)
        t0, busy0, ours0 = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
        cmd = [sys.executable, str(HERE / script)] + (["--quick"] if args.quick else [])
        proc = subprocess.Popen(cmd, cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("RESULT "):
                results.append(line.strip())
        code = proc.wait()
        wall = time.perf_counter() - t0
        print(f"({script}: {wall:.0f} s, exit code {code}; {foreign_cpu_note(busy0, ours0, wall)})", flush=True)
        if code != 0:
            failed.append(script)
    print(f"\n=== summary ({time.perf_counter() - started:.0f} s) ===")
    for line in results:
        print(line)
    for script in failed:
        print(f"FAILED {script}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
