"""Gradient spectra of one sample, factor route vs dense route, side by side on the bundled model (SmolLM2-135M):
``workbench.capture.gradients.dataset_gradients`` over bundled reasoning samples (the reference's prompt layout,
max_length 2048), W_Q/W_K/W_V/W_O of all 30 layers. ``route="factor"`` takes each gradient's singular values from
the T × T core of the QR factors of its per-token inputs and output gradients; ``route="dense"`` decomposes the
d × d gradient. Same forward and backward in both (timed in float32). The numbers must agree to 1e-6 relative
(asserted on one sample with the model in float64; nuclear norm, Frobenius norm, effective rank and top singular values, per
projection and layer; the float32 differences are printed too). RESULT ratio = factor seconds / dense seconds
(target: at most 0.5).
"""

from __future__ import annotations

import torch
from common import best_of_interleaved, load_model, load_note, parse_args, result, table

from workbench.capture.gradients import METRICS, dataset_gradients
from workbench.prompts import bundled_pairs


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


def main() -> None:
    args = parse_args(__doc__)
    lm = load_model()
    pairs = bundled_pairs("reasoning")[: 2 if args.quick else 6]
    runs = {route: (lambda route=route: dataset_gradients(lm, pairs, route=route)) for route in ("dense", "factor")}
    times = best_of_interleaved(runs, repeats=args.repeats, warmup=0)
    print(table(["route", "seconds", "per sample"], [[k, v, v / len(pairs)] for k, v in times.items()]))
    print(load_note())
    # same numbers: float32 (as timed) and, with the model in float64, to 1e-6 relative. In float32 the dense d × d
    # gradient carries round-off singular values (~1e-7 relative, one per dimension beyond rank T) that the exact
    # rank-T core has not; they move the effective rank by ~1e-5 relative, so the 1e-6 check runs in float64.
    for dtype in (torch.float32, torch.float64):
        lm.model.to(dtype)
        dense, factor = (dataset_gradients(lm, pairs[:1], route=route) for route in ("dense", "factor"))
        diffs = {m: max_relative(factor.mean[m], dense.mean[m]) for m in METRICS}
        diffs["top σ"] = max_relative(factor.top[..., :4], dense.top[..., :4])
        print(f"{dtype}: 1 sample of {dense.prompt_tokens + dense.response_tokens:.0f} tokens; largest relative "
              "difference factor vs dense: "
              + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    lm.model.to(torch.float32)
    assert max(diffs.values()) <= 1e-6, diffs
    result("gradient_spectra_factor_vs_dense", times["factor"] / times["dense"], 0.5)


if __name__ == "__main__":
    main()
