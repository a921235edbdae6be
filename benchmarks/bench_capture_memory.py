"""Capture memory: peak RSS of ``capture`` at N vs 10·N tokens, each size in a fresh subprocess.

Target (the issue): total peak RSS (``ru_maxrss`` at the end of the child, nothing subtracted) at 10·N tokens is at
most 1.2x the peak at N tokens. N = 2,000 (500 with ``--quick``); sites ``blocks.*.hook_resid_post``, keep="stats",
batch_size 8. The default prompts are cycled when they hold too few tokens and ``max_tokens`` caps the total.

Also reported, for information: RSS right after loading the model (``VmRSS``) and the peak so far at that point
(loading has its own transient peak); RSS after one 4-token forward ("warm": the weights are mmapped from the
safetensors file and only become resident when a forward touches them, ~0.5 GB that is not the capture's doing);
and the capture's own peak RSS, sampled every 2 ms by a background thread (no kernel peak counter is reset, so
``ru_maxrss`` stays the untouched process peak). The growth ratio (capture peak − warm RSS) at 10·N over N is
informative; the target is on the total peak.
"""

from __future__ import annotations

import json
import sys

import common

TARGET = 1.2
SITES = "blocks.*.hook_resid_post"


def child(n_tokens: int) -> None:
    """Runs in a fresh interpreter: load, capture ``n_tokens`` tokens, print one JSON line of readings."""
    import time

    import torch

    import workbench

    lm = workbench.load_model()
    after_load = common.current_rss_mib()
    peak_after_load = common.peak_rss_mib()
    with torch.inference_mode():  # the weights are mmapped from safetensors: a forward pages them in
        lm.model(torch.tensor([[1, 2, 3, 4]], device=lm.device))
    warm = common.current_rss_mib()
    total = 0
    times = 1
    while True:  # cycle the prompts until they hold enough tokens (a cheap over-estimate: 1 token >= 1 char / 8)
        texts = common.cycled_prompts(times)
        total = sum(len(t) for t in texts) // 8
        if total >= n_tokens:
            break
        times += 1
    started = time.perf_counter()
    with common.RssSampler() as sampler:
        cap = workbench.capture(lm, texts, sites=SITES, batch_size=8, max_tokens=n_tokens)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "n_tokens": cap.n_tokens, "n_texts": cap.n_texts, "seconds": seconds, "after_load": after_load,
        "peak_after_load": peak_after_load, "warm": warm, "capture_peak": sampler.peak,
        "end_rss": common.current_rss_mib(),
        "peak": common.peak_rss_mib(),
    }))


def run_child(n_tokens: int) -> dict:
    return common.run_child(__file__, n_tokens)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    args = common.parse_args(__doc__.splitlines()[0])
    n = 500 if args.quick else 2000
    small, large = run_child(n), run_child(10 * n)
    if large["n_tokens"] < 9 * small["n_tokens"]:
        raise SystemExit(f"the large run captured only {large['n_tokens']} tokens")
    rows = []
    for label, r in (("N", small), ("10·N", large)):
        rows.append([f"{label} = {r['n_tokens']} tok ({r['n_texts']} texts)", r["seconds"], r["after_load"],
                     r["peak_after_load"], r["warm"], r["capture_peak"], r["capture_peak"] - r["warm"], r["peak"]])
    keys = ("seconds", "after_load", "peak_after_load", "warm", "capture_peak")
    growth = (large["capture_peak"] - large["warm"]) / max(small["capture_peak"] - small["warm"], 1e-9)
    rows.append(["ratio 10·N / N", *[large[k] / small[k] for k in keys], growth, large["peak"] / small["peak"]])
    print(common.table(["run (fresh process each)", "capture s", "RSS after load", "peak after load", "RSS warm",
                        "capture peak", "capture growth", "total peak"], rows))
    print("(MiB; capture growth = capture peak − RSS warm)")
    common.result("capture_memory", large["peak"] / small["peak"], TARGET)


if __name__ == "__main__":
    main()
