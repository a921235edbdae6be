"""WeightWatcher 0.7.7 itself vs our weight_spectra on the bundled model: per-matrix values and the time ratio.

WeightWatcher is installed only for this script, at run time, into its own target folder (never into the project's
venv): ``pip install --target /tmp/ww-env weightwatcher==0.7.7`` with a constraints file pinning torch and numpy to
the venv's versions, and it runs in a subprocess that appends that folder to ``sys.path``. Both sides time analysing
every matrix (WeightWatcher: ``analyze(mp_fit=True)``, since we compute the MP spikes too; ours: the registered
compute on the model's weights). Agreement target: within 2% on log_norm, log_spectral_norm, stable_rank, and alpha
where WeightWatcher's fit is stable (alpha < 8 and KS distance D < 0.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WW_ENV = Path(tempfile.gettempdir()) / "ww-env"
HF_NAMES = {"q_proj": "W_Q", "k_proj": "W_K", "v_proj": "W_V", "o_proj": "W_O", "gate_proj": "W_gate",
            "up_proj": "W_in", "down_proj": "W_out"}
COLUMNS = ("alpha", "log_norm", "log_spectral_norm", "stable_rank", "alpha_weighted", "num_spikes", "mp_softrank")
TARGET = 0.02

WW_SCRIPT = r"""
import json, logging, sys, time, warnings
sys.path.append(sys.argv[1])
warnings.simplefilter("ignore")
import workbench
import weightwatcher as ww
logging.getLogger("weightwatcher").setLevel(logging.ERROR)
hf = workbench.load_model().model.original_model
watcher = ww.WeightWatcher()
t0 = time.perf_counter()
details = watcher.analyze(model=hf, mp_fit=True)
elapsed = time.perf_counter() - t0
cols = ["longname", "alpha", "D", "log_norm", "log_spectral_norm", "stable_rank", "alpha_weighted", "num_spikes",
        "mp_softrank", "M", "N"]
rows = details[[c for c in cols if c in details.columns]].to_dict(orient="records")
json.dump({"seconds": elapsed, "rows": rows, "version": ww.__version__}, open(sys.argv[2], "w"), default=float)
"""


def install() -> None:
    if (WW_ENV / "weightwatcher" / "__init__.py").exists():
        return
    import numpy
    import torch

    constraints = Path(tempfile.gettempdir()) / "ww-constraints.txt"
    constraints.write_text(f"torch=={torch.__version__.split('+')[0]}\nnumpy=={numpy.__version__}\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(WW_ENV), "-c", str(constraints),
                    "weightwatcher==0.7.7"], check=True)


def run_weightwatcher() -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    subprocess.run([sys.executable, "-c", WW_SCRIPT, str(WW_ENV), out], check=True)
    return json.loads(Path(out).read_text())


def key(longname: str) -> tuple[str, int | None] | None:
    parts = longname.split(".")
    if parts[-1] in HF_NAMES and "layers" in parts:
        return HF_NAMES[parts[-1]], int(parts[parts.index("layers") + 1])
    return {"embed_tokens": ("W_E", None), "lm_head": ("W_U", None)}.get(parts[-1])


def run_ours():
    import workbench
    from workbench.analysis import Inputs
    from workbench_analyses.weight_spectra import WeightSpectraConfig, compute

    lm = workbench.load_model()
    started = time.perf_counter()
    inputs = Inputs(model_name=lm.name, facts=lm.facts, weights=list(lm.weights()))
    result = compute(inputs, WeightSpectraConfig())
    return result, time.perf_counter() - started


def rel(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> None:
    install()
    ww = run_weightwatcher()
    ours, ours_s = run_ours()
    index = {(m, layer): i for i, (m, layer, h) in enumerate(zip(ours.matrix, ours.layer, ours.head)) if h == -1}
    print(f"weightwatcher {ww['version']}: {len(ww['rows'])} layers in {ww['seconds']:.2f} s; "
          f"ours: {len(index)} matrices in {ours_s:.2f} s")
    print(f"{'matrix':<16}" + "".join(f"{c:>28}" for c in COLUMNS[:4]) + f"{'spikes':>12}{'softrank':>20}")
    agree = {c: [0, 0] for c in COLUMNS[:4]}
    for row in ww["rows"]:
        k = key(row["longname"])
        if k is None or k not in index:
            continue
        i = index[k]
        cells = []
        for c in COLUMNS[:4]:
            mine, theirs = getattr(ours, c)[i], row[c]
            r = rel(mine, theirs)
            stable = c != "alpha" or (0 < theirs < 8 and row.get("D", 1) < 0.1)
            if stable:
                agree[c][0] += r <= TARGET
                agree[c][1] += 1
            cells.append(f"{mine:9.4f} {theirs:9.4f} {100 * r:6.2f}%{'' if stable else '*'}")
        name = f"{k[0]}{'' if k[1] is None else '.' + str(k[1])}"
        print(f"{name:<16}" + "".join(f"{c:>28}" for c in cells)
              + f"{ours.num_spikes[i]:>5} {row.get('num_spikes', -1):>5}"
              + f"{ours.mp_softrank[i]:>9.3f} {row.get('mp_softrank', float('nan')):>9.3f}")
    print("columns: ours, WeightWatcher, relative difference (* = WW alpha fit unstable: alpha >= 8 or D >= 0.1)")
    for c, (ok, n) in agree.items():
        print(f"agreement {c:<18} {ok}/{n} within {TARGET:.0%}")
    ratio = ww["seconds"] / ours_s
    print(f"RESULT weightwatcher_speedup ratio={ratio:.2f} target=1.0 {'PASS' if ratio >= 1 else 'MISS'}")


if __name__ == "__main__":
    main()
