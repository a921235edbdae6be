"""Capture overhead: ``workbench.capture`` with Gram accumulation vs a bare forward over identical padded batches.

Targets (the issues): capture of all 30 ``blocks.*.hook_resid_post`` sites with streamed Gram statistics costs at
most 1.10x a bare ``lm.model(tokens)`` forward under ``torch.inference_mode`` over the same batches (RESULT
capture_overhead), and so does capture of all 90 resid_post + attn_out + mlp_out sites (RESULT capture_90_overhead).

Rows (timed round-robin, order rotated each round, best of 3 after one warm-up each; each RESULT is
best(capture) / best(bare)):

* ``bare forward``: ``lm.model(tokens)`` per batch, full forward including the 49k-wide unembedding (the baseline).
* ``capture 30 resid_post``: the measured call, ``capture(lm, texts, sites=..., batch_size=8)``; includes capture's own
  tokenization, its 2-token probe forward and batch building (the bare rows do not: their batches are pre-built).
* ``bare, stopped after last resid_post``: the bare forward cut (by an exception from one hook) exactly where capture
  stops, i.e. without ``ln_final`` and the unembedding. ``bare / this`` is what early stopping saves.
* ``+ 29 no-op hooks``: the same, with a no-op hook on the 29 other resid_post sites: the cost of hook dispatch alone.
  ``capture 30 / this`` is then the cost of the statistics (gather of kept rows, float64 centred Gram) and setup.
* ``capture 30 + unembed.hook_in``: adds the last hook that fires before the unembedding matmul (hooks after it are
  49,152 wide, too wide for a Gram), so the stop moves past ``ln_final``; the unembedding itself is still skipped,
  so no capture can run the full forward: "without early stop" is derived as capture 30 + (bare − bare stopped).
* ``capture 90``: resid_post + hook_attn_out + hook_mlp_out of every block, default ``gram_dtype="auto"`` (float32
  products into float64 sums); ``capture 90, gram_dtype="float64"``: the same with the exact float64 products.
* ``run_with_cache 30 names``: TransformerLens' way, storing the 30 activations (full forward, no statistics).

Because the machine is shared and a forward's time drifts by ±10-20 % from run to run, the table also gives the
median, and the median over rounds of the paired ratio capture/bare (the two run close together in each round).
"""

from __future__ import annotations

import time

import common
import torch

import workbench
from workbench.capture import tokens as tok
from workbench.capture.hooks import StopForward, hooks_attached, resolve_sites, stoppable

TARGET = 1.10
RESID = "blocks.*.hook_resid_post"


def main() -> None:
    args = common.parse_args(__doc__.splitlines()[0])
    n_prompts = 16 if args.quick else 64
    repeats = args.repeats
    lm = common.load_model()
    texts = common.default_prompts(n_prompts)
    points = lm.hook_points()
    resid = resolve_sites(points, RESID)
    three = resolve_sites(points, [RESID, "blocks.*.hook_attn_out", "blocks.*.hook_mlp_out"])
    tail = resid + ["unembed.hook_in"]
    assert len(resid) == 30 and len(three) == 90, (len(resid), len(three))

    tokenized = tok.tokenize(lm, texts, max_length=None, max_tokens=None)
    batches = list(tok.batches(tokenized, 8, tok.pad_id(lm), "all", True))
    padded = sum(b.tokens.numel() for b in batches)
    print(f"{len(texts)} prompts, {tokenized.n_tokens} tokens ({padded} with padding) in {len(batches)} batches of 8; "
          f"torch threads {torch.get_num_threads()}; best of {repeats} after 1 warm-up, round-robin")

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                lm.model(b.tokens.to(lm.device))

    def stop_hook(x: torch.Tensor, hook: object = None) -> None:
        raise StopForward

    def noop_hook(x: torch.Tensor, hook: object = None) -> None:
        return None

    def stopped_forward(hooks: dict):
        def run() -> None:
            with hooks_attached(points, hooks), torch.inference_mode():
                for b in batches:
                    with stoppable():
                        lm.model(b.tokens.to(lm.device))
        return run

    def cap(sites: list[str], **kwargs):
        return lambda: workbench.capture(lm, texts, sites=sites, batch_size=8, **kwargs)

    def run_with_cache() -> None:
        with torch.inference_mode():
            for b in batches:
                logits, cache = lm.model.run_with_cache(b.tokens.to(lm.device), names_filter=resid)
                del logits, cache

    def prepare() -> None:  # what capture does before its first batch, besides the probe forward
        t = tok.tokenize(lm, texts, max_length=None, max_tokens=None)
        list(tok.batches(t, 8, tok.pad_id(lm), "all", True))

    variants = {
        "bare forward (baseline)": bare,
        "capture 30 resid_post": cap(resid),
        "bare, stopped after last resid_post": stopped_forward({resid[-1]: stop_hook}),
        "  + 29 no-op hooks on the other sites": stopped_forward({**{n: noop_hook for n in resid[:-1]},
                                                                 resid[-1]: stop_hook}),
        "capture 30 + unembed.hook_in": cap(tail),
        "capture 90 (resid+attn_out+mlp_out)": cap(three),
        'capture 90, gram_dtype="float64"': cap(three, gram_dtype="float64"),
        "run_with_cache 30 names": run_with_cache,
    }
    started = time.perf_counter()
    times = common.times_interleaved(variants, repeats=repeats, warmup=1)
    best = {name: min(t) for name, t in times.items()}
    prep = common.best_of(prepare, repeats=repeats, warmup=1)
    print(f"(timing took {time.perf_counter() - started:.0f} s; {common.load_note()})\n")

    base, stopped = best["bare forward (baseline)"], best["bare, stopped after last resid_post"]
    rows = [[name, best[name], sorted(t)[len(t) // 2], best[name] / base, best[name] / stopped,
             round(tokenized.n_tokens / best[name])] for name, t in times.items()]
    rows.append(["  capture's tokenize + batching (in capture)", prep, "", prep / base, prep / stopped, ""])
    print(common.table(["variant", "best s", "median s", "vs bare", "vs bare-stopped", "tok/s"], rows))
    cap30 = best["capture 30 resid_post"]
    noop = best["  + 29 no-op hooks on the other sites"]
    tail_cost = base - stopped
    paired = sorted(c / b for c, b in zip(times["capture 30 resid_post"], times["bare forward (baseline)"],
                                          strict=True))
    print(f"\nearly stop saves {tail_cost:.2f} s ({tail_cost / base:.1%} of the bare forward: ln_final + unembedding);"
          f" capture 30 without early stop would be about {(cap30 + tail_cost) / base:.3f}x bare (derived)")
    print(f"hook dispatch (29 no-op hooks): {(noop - stopped) / stopped:+.1%}; statistics + capture setup over that: "
          f"{(cap30 - noop) / noop:+.1%}")
    print(f"paired capture 30 / bare per round, sorted: {', '.join(f'{r:.3f}' for r in paired)} "
          f"(median {paired[len(paired) // 2]:.3f})")
    common.result("capture_overhead", cap30 / base, TARGET)
    common.result("capture_90_overhead", best["capture 90 (resid+attn_out+mlp_out)"] / base, TARGET)


if __name__ == "__main__":
    main()
