"""SAE feature statistics: the streamed ``workbench.sae.feature_stats`` vs the dense way (keep every token's activation
with ``capture(keep="full")``, encode them all, then compute the same per-feature numbers), side by side on SmolLM2 at
``blocks.15.hook_resid_post`` with a 2304-feature TopK SAE (k = 32; sae-lens's random initialisation, which costs
what a trained one costs), at N and 4·N tokens, each run in a fresh subprocess.

Targets: the streamed run's total peak RSS at 4·N tokens is at most 1.2x its peak at N (memory flat in tokens, like
capture); its time is at most 1.2x the dense computation's at 4·N (streaming, top-k windows and histograms included).
N = 4,000 tokens (1,000 with ``--quick``). The dense run's peak is printed beside it: it grows with the tokens.
"""

from __future__ import annotations

import json
import sys
import time

import common

SITE = "blocks.15.hook_resid_post"
D_SAE, K = 2304, 32
MEMORY_TARGET = TIME_TARGET = 1.2


def _texts(n_tokens: int) -> list[str]:
    times = 1
    while sum(len(t) for t in common.cycled_prompts(times)) // 8 < n_tokens:
        times += 1
    return common.cycled_prompts(times)


def _sae(d_in: int):
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=K, device="cpu")).eval()


def _dense(lm, sae, texts: list[str], n_tokens: int) -> int:
    """What a script does without the library: keep every row, encode them all, reduce over the token axis (and the
    same logit effects, a fixed cost of both)."""
    import torch

    import workbench
    from workbench.intervene.direct_logits import direction_logits

    cap = workbench.capture(lm, texts, sites=SITE, keep="full", max_tokens=n_tokens, max_length=128)
    x = cap[SITE].full
    with torch.inference_mode():
        acts = sae.encode(x.float())
        fired = acts > 0
        density, top_max = fired.float().mean(0), acts.max(0).values
        mean = (acts.sum(0) / fired.sum(0).clamp_min(1))
        top = acts.topk(20, dim=0)
        hist = torch.bucketize(acts[fired].log10(), torch.linspace(-3, 4, 71)[1:-1])
    del density, top_max, mean, top, hist
    direction_logits(lm, sae.W_dec.detach(), top=10)
    return int(x.shape[0])


def child(mode: str, n_tokens: int) -> None:
    import workbench
    from workbench.sae import feature_stats

    lm = workbench.load_model()
    sae = _sae(lm.d_model)
    texts = _texts(n_tokens)

    def work(tokens: int) -> int:
        if mode == "stream":
            return feature_stats(lm, sae, texts, site=SITE, max_tokens=tokens, max_length=128).n_tokens
        return _dense(lm, sae, texts, tokens)

    work(64)  # first-call costs (lazy imports, kernel set-up) out of the timing, for both
    warm = common.current_rss_mib()
    started = time.perf_counter()
    with common.RssSampler() as sampler:
        n = work(n_tokens)
    print(json.dumps({"mode": mode, "n_tokens": n, "seconds": time.perf_counter() - started, "warm": warm,
                      "work_peak": sampler.peak, "peak": common.peak_rss_mib()}))


def run_child(mode: str, n_tokens: int) -> dict:
    return common.run_child(__file__, mode, n_tokens)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    args = common.parse_args(__doc__.splitlines()[0])
    n = 1000 if args.quick else 4000
    runs = {(mode, size): run_child(mode, size) for size in (n, 4 * n) for mode in ("dense", "stream")}
    rows = [[f"{mode} {r['n_tokens']} tok", r["seconds"], r["warm"], r["work_peak"], r["work_peak"] - r["warm"],
             r["peak"]] for (mode, _), r in runs.items()]
    print(common.table(["run (fresh process each)", "seconds", "RSS warm", "work peak", "growth", "total peak"],
                       rows))
    print("(MiB; growth = work peak − RSS warm)")
    memory = runs[("stream", 4 * n)]["peak"] / runs[("stream", n)]["peak"]
    dense_memory = runs[("dense", 4 * n)]["peak"] / runs[("dense", n)]["peak"]
    print(f"total peak 4·N / N: streamed {memory:.3f}, dense {dense_memory:.3f}")
    common.result("sae_features_memory", memory, MEMORY_TARGET)
    common.result("sae_features_vs_dense_time", runs[("stream", 4 * n)]["seconds"] / runs[("dense", 4 * n)]["seconds"],
                  TIME_TARGET)


if __name__ == "__main__":
    main()
