"""Effective-rank dynamics of a growing token sequence: ER of prefixes, ERV and ERA (pure tensor functions, no model).

"Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach for LLM Reasoning in RLVR", as its reference
code computes it (github.com/hf618/VERL, ``verl/trainer/metrics_utils.py``). ER_k is the effective rank
(Roy & Vetterli, with VERL's ε) of the mean-centred prefix H[:k]; Δ_i = ER_i − mean(ER_0..ER_{i−1}) from the 2nd
prefix, ERV = mean Δ (effective-rank velocity), diff2_i = Δ_i − Δ_{i−1} from the 3rd, ERA = mean diff2
(acceleration). Two reference code paths choose the prefixes (``variant``):

``"optimized"`` (the default; hf618/VERL ``calculate_diffs_for_single_sample_optimized``, selected by
    ``diff_calculator_method: 'optimized'`` in ``verl/trainer/config/ppo_trainer.yaml``): the LAST
    K = min(T, max_seq_len) tokens; prefixes H[:t+1] for t = s, 2s, ... < K (so k = s+1, 2s+1, ...); nothing at all
    when K < 2s.
``"batched"`` (the later ``_calculate_diffs_batched_single_device``, not in hf618/VERL's published history): the
    FIRST K tokens; prefixes H[:k] for k = s, 2s, ... <= K. Its optional extra point from the full-length metric
    (``base_metrics_batch``, when the last stride stops short of the end) is not reproduced; its running mean divides
    by count + 1e-8 (here: by count; ~1e-8 relative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.errors import shape_error
from workbench.spectra.checks import check_finite
from workbench.validation import check_bool, check_choice, check_int

VERL_EPS = 1e-8  # VERL's EPS in p = σ/(Σσ + EPS) and log(p + EPS)
VARIANTS = ("optimized", "batched")


@dataclass(frozen=True)
class ErankDynamics:
    """What :func:`erv_era` returns; one entry per layer (a single ``[T, d]`` input counts as one layer).

    ``ks``: prefix lengths (tokens) of the window ``hidden[..., start:start + n_tokens, :]``. ``erank_t[l][i]``: ER
    of the window's first ``ks[i]`` tokens at layer l. ``erv``/``era``: NaN where undefined (ERV needs 2 prefixes,
    ERA 3). ``variant``: which reference code path chose the prefixes.

    Example: ``dyn: ErankDynamics = erv_era(torch.randn(200, 64)); dyn.erv[0], dyn.era[0]``"""

    ks: list[int]
    erank_t: list[list[float]]
    erv: list[float]
    era: list[float]
    n_tokens: int  # K, the window's length
    start: int  # index of the window's first token in the input
    variant: str


def rank_dynamics(erank: list[float]) -> tuple[list[float], list[float], float, float]:
    """VERL's arithmetic on one ER sequence: ``(deltas, diff2, erv, era)``, NaN where there are too few points.

    Δ_i = ER_i − mean(ER_0..ER_{i−1}) for i >= 1; diff2_i = Δ_i − Δ_{i−1} for i >= 2; ERV = mean Δ; ERA = mean diff2.
    (The optimized path divides the running sum by the count, as here; the batched one by count + 1e-8.)

    Example: ``deltas, diff2, erv, era = rank_dynamics([10.0, 12.0, 13.5, 14.0])``"""
    deltas = [erank[i] - sum(erank[:i]) / i for i in range(1, len(erank))]
    diff2 = [deltas[i] - deltas[i - 1] for i in range(1, len(deltas))]
    erv = sum(deltas) / len(deltas) if deltas else math.nan
    era = sum(diff2) / len(diff2) if diff2 else math.nan
    return deltas, diff2, erv, era


def verl_erank(eigvals: torch.Tensor) -> torch.Tensor:
    """VERL's effective rank from Gram eigenvalues, in float32: σ = sqrt(relu(λ)), p = σ/(Σσ + 1e-8),
    exp(−Σ p log(p + 1e-8)) (``_get_metrics_from_eigenvalues`` / ``batched_effective_rank``).

    Written out rather than calling ``workbench.spectra.effective_rank(s, eps=1e-8)``: that one returns 0 on an
    all-zero spectrum (e.g. identical tokens), where VERL's formula gives 1; elsewhere they agree exactly.

    Example: ``verl_erank(torch.linalg.eigvalsh(x.T @ x))``"""
    s = torch.sqrt(torch.relu(eigvals)).to(torch.float32)
    p = s / (s.sum(dim=-1, keepdim=True) + VERL_EPS)
    return torch.exp(-(p * torch.log(p + VERL_EPS)).sum(dim=-1))


def prefix_lengths(n_tokens: int, *, stride: int, max_seq_len: int, variant: str) -> tuple[int, int, list[int]]:
    """``(start, K, ks)``: the window ``[start, start + K)`` of an ``n_tokens`` sequence and the prefix lengths ``ks``
    within it that ``variant`` evaluates (see the module docstring).

    Example: ``start, k, ks = prefix_lengths(300, stride=20, max_seq_len=512, variant="optimized")``"""
    k_max = min(n_tokens, max_seq_len)
    if variant == "batched":
        return 0, k_max, list(range(stride, k_max + 1, stride))
    start = n_tokens - k_max
    if k_max < 2 * stride:
        return start, k_max, []
    return start, k_max, [t + 1 for t in range(stride, k_max, stride)]


def _check_args(hidden: object, stride: object, max_seq_len: object, center: object, variant: object) -> torch.Tensor:
    call = "erv_era"
    check_int(call, "stride", stride, low=1)
    check_int(call, "max_seq_len", max_seq_len, low=stride, allowed=f"an int >= stride ({stride})")
    check_bool(call, "center", center)
    check_choice(call, "variant", variant, VARIANTS)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim not in (2, 3):
        got = f"shape {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise shape_error(call, "hidden", "a tensor of shape [T, d] or [L, T, d]", got)
    if not hidden.dtype.is_floating_point:
        raise shape_error(call, "hidden", "a floating-point tensor", hidden.dtype)
    if 0 in hidden.shape:
        raise shape_error(call, "hidden", "at least one layer, token and feature", f"shape {tuple(hidden.shape)}")
    check_finite(call, "hidden", hidden)
    return hidden if hidden.ndim == 3 else hidden.unsqueeze(0)


def erv_era(hidden: torch.Tensor, *, stride: int = 20, max_seq_len: int = 512,
            center: bool = True, variant: str = "optimized") -> ErankDynamics:
    """ER of the prefixes ``variant`` chooses (module docstring), and ERV/ERA, for ``hidden`` [T, d] or [L, T, d].

    ``hidden``'s rows are taken in order as the sequence; which positions' states they are is the caller's choice
    (VERL's are the final-norm states that *produced* each response token: see ``analyses.erank_dynamics``).
    Fewer tokens than the variant needs give empty ``ks`` and NaN ERV/ERA (VERL records nothing for them).

    Numerics (a deviation from VERL's float32 Gram, same quantity): the prefix Gram, its centring and eigenvalues are
    computed in float64 (G − kμμᵀ cancels badly in float32 when the mean is large); eigenvalues below the float64
    round-off level (λ_max·n·eps) are set to 0 (exact zeros would otherwise come back as ±1e-16·λ_max noise, and
    VERL's float32 noise is larger still); σ = sqrt(λ) is then cast to float32 for VERL's entropy
    (:func:`verl_erank`). While k < d the k×k Gram of the centred prefix is used, as VERL does (same nonzero
    eigenvalues, milliseconds instead of seconds on a CPU); from k >= d the d×d Gram Σ hᵢhᵢᵀ and the token sum are
    accumulated incrementally, centred as G − k·μμᵀ. ``center=False`` skips the centring (not in VERL).

    Example: ``erv_era(torch.randn(200, 64), stride=20).erv  # one value: a [T, d] input counts as one layer``"""
    h = _check_args(hidden, stride, max_seq_len, center, variant)
    n_layers, n_tokens, d = h.shape
    start, k_max, ks = prefix_lengths(n_tokens, stride=stride, max_seq_len=max_seq_len, variant=variant)
    window = h[:, start:start + k_max]
    eranks = _prefix_eranks(window, ks, center)
    erank_t = torch.stack(eranks, dim=1).tolist() if eranks else [[] for _ in range(n_layers)]
    dyn = [rank_dynamics(row) for row in erank_t]
    return ErankDynamics(ks=ks, erank_t=erank_t, erv=[x[2] for x in dyn], era=[x[3] for x in dyn], n_tokens=k_max,
                         start=start, variant=variant)


def _prefix_eranks(h: torch.Tensor, ks: list[int], center: bool) -> list[torch.Tensor]:
    """``[L]`` ER of ``h[:, :k]`` for each k in ``ks`` (increasing), per layer (see :func:`erv_era`)."""
    n_layers, _, d = h.shape
    gram = torch.zeros(n_layers, d, d, dtype=torch.float64, device=h.device)
    total = torch.zeros(n_layers, d, dtype=torch.float64, device=h.device)
    done = 0  # tokens folded into gram/total (only needed once k >= d)
    out = []
    for k in ks:
        if k < d:  # L-mode: the k×k token Gram has the same nonzero eigenvalues and is far cheaper
            x = h[:, :k].to(torch.float64)
            x = x - x.mean(dim=1, keepdim=True) if center else x
            g = x @ x.transpose(1, 2)
        else:
            block = h[:, done:k].to(torch.float64)
            gram += block.transpose(1, 2) @ block
            total += block.sum(dim=1)
            done = k
            g = gram - total.unsqueeze(2) * total.unsqueeze(1) / k if center else gram
        lam = torch.linalg.eigvalsh(g)
        tol = lam[:, -1:].clamp(min=0) * g.shape[-1] * torch.finfo(torch.float64).eps
        out.append(verl_erank(torch.where(lam > tol, lam, torch.zeros_like(lam))))
    return out
