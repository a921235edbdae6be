"""The formulas of language-neuron steering ("Neural FOXP2"), as the reference code PhotonTJ/NeuralFoxP2 computes them.

Stage I (``neural_foxp2/stage1.py``, ``run_stage1``; ``utils.py``, ``compute_selectivity``): selectivity
Sel_j = (μ_tgt − μ_en)/(σ_tgt + σ_en + 1e-6) per SAE feature; the ``top_k`` most selective features
(``np.argsort(sel)[-top_k:]``) get a causal lift = median over α of mean ΔM(α)/α (``compute_feature_lift``); the
language neurons are those features, ranked by max(Sel, 0)·max(lift, 0), whose joint score is > 0. A language neuron
is an SAE feature index, not a residual dimension.

Stage II (``stage2.py``): ΔZ = z_tgt − z_en over pairs, zero outside the language neurons; SVD; rank
r = max(1, min(⌈erank(σ²)⌉, 12, eigengap)) (``compute_steering_directions``), mass = top-r share of σ²
(``compute_spectral_mass``), stability = median over resample pairs of tr(PᵢPⱼ)/tr(Pᵢ) with r re-chosen on each
bootstrap resample (``compute_stability_bootstrap``); window = the contiguous 3–6 layers with the largest summed
mass·stability (``find_best_contiguous_window``).

Stage III (``stage3.py``): μ_tgt, μ_en projected into the stage-II subspace (``compute_target_prototype``,
``compute_english_attractor``, ``run_stage3``); Δz = λ·μ_tgt − β·P(⟨z, μ_en⟩μ_en) on the language neurons
(``Stage3InterventionHook``).

Every function computes in float64 and mirrors the reference's numpy tie-breaking (``np.argsort``, ``np.argmax``,
``np.random.RandomState.choice``), so the parity tests in ``tests/workbench/intervene`` agree to 1e-8.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from workbench.errors import config_error, shape_error
from workbench.validation import check_int

SELECTIVITY_EPS = 1e-6  # utils.py compute_selectivity
GAP_EPS = 1e-10  # stage2.py find_eigengap / compute_spectral_mass
NORMALIZE_EPS = 1e-8  # utils.py normalize_vector
R_MAX = 12  # config.py r_max


def selectivity(z_tgt: torch.Tensor, z_en: torch.Tensor, *, ddof: int = 0) -> torch.Tensor:
    """``[F]`` Sel_j = (μ_tgt − μ_en)/(σ_tgt + σ_en + 1e-6) over rows of ``[N_tgt, F]`` and ``[N_en, F]``
    (PhotonTJ/NeuralFoxP2 neural_foxp2/utils.py, compute_selectivity).

    ``ddof``: 0 (population standard deviation, numpy's default, as the reference's numpy code) or 1.

    Example: ``sel = selectivity(z_es, z_en)  # [F], one score per SAE feature``"""
    if z_tgt.ndim != 2 or z_en.ndim != 2 or z_tgt.shape[1] != z_en.shape[1]:
        raise shape_error("selectivity", "z_en", f"[N, {z_tgt.shape[-1]}] like z_tgt", tuple(z_en.shape))
    if min(z_tgt.shape[0], z_en.shape[0]) <= ddof:
        raise shape_error("selectivity", "z_tgt", f"more than ddof={ddof} rows per language",
                          (z_tgt.shape[0], z_en.shape[0]))
    mu_t, mu_e = z_tgt.double().mean(0), z_en.double().mean(0)
    sd_t, sd_e = z_tgt.double().std(0, correction=ddof), z_en.double().std(0, correction=ddof)
    return (mu_t - mu_e) / (sd_t + sd_e + SELECTIVITY_EPS)


def causal_lift(delta_m: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Lift = median over α of ΔM(α)/α; ``delta_m`` ``[..., A]`` (mean change of M per α), ``alphas`` ``[A]``
    (PhotonTJ/NeuralFoxP2 neural_foxp2/stage1.py, compute_feature_lift: ``np.median(slopes)``, which averages the two
    middle values of an even count; torch's median would take the lower one, so a 0.5-quantile is used).

    Example: ``causal_lift(delta_m, torch.tensor([1.0, 2.0, 4.0]))``"""
    if delta_m.shape[-1] != alphas.shape[0] or bool((alphas == 0).any()):
        raise config_error("causal_lift", "alphas", f"{delta_m.shape[-1]} non-zero values", alphas.tolist())
    return torch.quantile((delta_m.double() / alphas.double()), 0.5, dim=-1)


def top_selective(sel: torch.Tensor, top_k: int) -> list[int]:
    """The ``top_k`` most selective feature indices in the reference's order, ``np.argsort(sel)[-top_k:]`` (ascending,
    so the most selective comes last; ties as numpy's default sort breaks them) — PhotonTJ/NeuralFoxP2
    neural_foxp2/stage1.py, run_stage1. Negative selectivities are kept when fewer are positive (their joint score
    is then 0).

    Example: ``candidates = top_selective(selectivity(z_es, z_en), 50)``"""
    check_int("top_selective", "top_k", top_k, low=1)
    return [int(j) for j in np.argsort(sel.double().cpu().numpy())[-top_k:]]


def rank_language_neurons(features: list[int], sel: torch.Tensor, lifts: torch.Tensor) -> tuple[list[int], list[float]]:
    """(language neurons, their joint scores): ``features`` (``[K]`` indices with selectivity ``sel[features]`` and
    ``lifts`` ``[K]``) ranked by joint = max(Sel, 0)·max(lift, 0) descending (``np.argsort(joint)[::-1]``, so ties
    come in reverse order), keeping joint > 0 — PhotonTJ/NeuralFoxP2 neural_foxp2/stage1.py, run_stage1.

    Example: ``neurons, joint = rank_language_neurons(candidates, sel, lifts)``"""
    idx = np.asarray(features, dtype=int)
    if lifts.shape != (len(idx),):
        raise shape_error("rank_language_neurons", "lifts", f"[{len(idx)}] (one per feature)", tuple(lifts.shape))
    s = np.maximum(sel.double().cpu().numpy()[idx], 0)
    c = np.maximum(lifts.double().cpu().numpy(), 0)
    joint = s * c
    order = np.argsort(joint)[::-1]
    return ([int(j) for j, v in zip(idx[order], joint[order]) if v > 0],
            [float(v) for v in joint[order] if v > 0])


def energy_erank(s: torch.Tensor) -> float:
    """exp(entropy) of the energies p = σ²/Σσ² (entries ≤ 1e-10 dropped; 1 when Σσ² < 1e-10) — PhotonTJ/NeuralFoxP2
    neural_foxp2/stage2.py, compute_effective_rank. For σ = [2, 1]: 1.649 (Roy–Vetterli on σ would give 1.890).

    Example: ``energy_erank(torch.tensor([2.0, 1.0]))  # 1.649``"""
    s2 = s.double().cpu().numpy() ** 2
    total = s2.sum()
    if total < 1e-10:
        return 1.0
    p = s2 / total
    p = p[p > 1e-10]
    return float(np.exp(-np.sum(p * np.log(p))))


def eigengap(s: torch.Tensor, r_max: int = R_MAX) -> int:
    """1 + argmax of σ_i/(σ_{i+1} + 1e-10) over the FIRST ``r_max`` gaps only (first index on ties) — PhotonTJ/
    NeuralFoxP2 neural_foxp2/stage2.py, find_eigengap. A gap into zero singular values is ~σ·1e10 and wins.

    Example: ``eigengap(torch.tensor([5.0, 4.0, 1.0, 0.9]))  # 2``"""
    v = s.double().cpu().numpy()
    if len(v) < 2:
        return 1
    gaps = (v[:-1] / (v[1:] + GAP_EPS))[:r_max]
    return int(np.argmax(gaps)) + 1


def steering_rank(s: torch.Tensor, *, cap: int = R_MAX, energy: bool = True) -> int:
    """r = max(1, min(⌈erank⌉, cap, eigengap(σ, cap))) for descending singular values ``s`` — PhotonTJ/NeuralFoxP2
    neural_foxp2/stage2.py, compute_steering_directions. ``s`` must hold all min(N, width) singular values of the
    full-width ΔZ (zeros included: :func:`steering_directions` pads them), as the reference's SVD does.

    ``energy=True`` (the reference): erank on σ²/Σσ²; ``energy=False`` (a deviation): Roy–Vetterli erank on σ.

    Example: ``steering_rank(s, cap=8, energy=True)``"""
    s = s.double()
    if s.ndim != 1 or s.numel() == 0 or not bool((s[:-1] >= s[1:]).all()) or bool((s < 0).any()):
        raise config_error("steering_rank", "s", "descending non-negative singular values", s.tolist())
    if energy:
        er = energy_erank(s)
    else:
        from workbench.spectra import effective_rank
        er = float(effective_rank(s)) if float(s.sum()) > 0 else 1.0
    return max(min(min(int(math.ceil(er)), cap), eigengap(s, cap)), 1)


def top_mass(s: torch.Tensor, r: int) -> float:
    """Σ_{i≤r} σ_i² / (Σ σ_i² + 1e-10) — PhotonTJ/NeuralFoxP2 neural_foxp2/stage2.py, compute_spectral_mass.

    Example: ``top_mass(torch.tensor([3.0, 1.0, 0.5]), 1)``"""
    e = s.double().cpu().numpy() ** 2
    return float(e[:r].sum() / (e.sum() + GAP_EPS))


def _restricted(delta: torch.Tensor, neurons: list[int]) -> np.ndarray:
    if delta.ndim != 2:
        raise shape_error("steering_directions", "delta", "a 2-D [N, F] matrix", tuple(delta.shape))
    if not neurons or min(neurons) < 0 or max(neurons) >= delta.shape[1]:
        raise config_error("steering_directions", "neurons", f"a non-empty list of indices in [0, {delta.shape[1]})",
                           neurons)
    return delta.double().cpu().numpy()[:, sorted(set(neurons))]


def _directions(sub: np.ndarray, width: int, cap: int, energy: bool) -> tuple[np.ndarray, np.ndarray, int]:
    _, s, vt = np.linalg.svd(sub, full_matrices=False)
    full = np.zeros(min(sub.shape[0], width))  # the reference's SVD of the zero-padded [N, F] ΔZ
    full[:len(s)] = s
    r = steering_rank(torch.from_numpy(full), cap=cap, energy=energy)
    return full, vt.T, r


def steering_directions(delta: torch.Tensor, neurons: list[int], *, cap: int = R_MAX,
                        energy: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(σ ``[min(N, F)]``, V_r ``[F, r]``, r) of ΔZ ``[N, F]`` restricted to ``neurons`` (zero elsewhere) —
    PhotonTJ/NeuralFoxP2 neural_foxp2/stage2.py, compute_language_shift_matrix + compute_steering_directions. The
    SVD runs on the neuron columns; the singular values are padded with the zeros the full-width SVD has, and V_r is
    zero outside the neurons, so P = V_r V_rᵀ equals the reference's projector.

    Example: ``s, v_r, r = steering_directions(z_es - z_en, neurons, cap=8)``"""
    sub = _restricted(delta, neurons)
    s, v, r = _directions(sub, delta.shape[1], cap, energy)
    full_v = np.zeros((delta.shape[1], r))
    full_v[sorted(set(neurons))] = v[:, :r]
    return torch.from_numpy(s), torch.from_numpy(full_v), r


def subspace_stability(delta: torch.Tensor, neurons: list[int], *, resamples: int = 20, seed: int = 0,
                       cap: int = R_MAX, energy: bool = True) -> float:
    """Median over pairs i < j of ``resamples`` bootstrap resamples of tr(PᵢPⱼ)/tr(Pᵢ), r re-chosen on each resample —
    PhotonTJ/NeuralFoxP2 neural_foxp2/stage2.py, compute_stability_bootstrap. Rows are drawn as the reference draws
    them, ``np.random.choice(n, n, replace=True)``, from ``np.random.RandomState(seed)`` (the reference uses the
    global numpy generator). tr(PᵢPⱼ) = ‖V_iᵀV_j‖²_F and tr(Pᵢ) = r_i; 1 = the same subspace every time.

    Example: ``subspace_stability(z_es - z_en, neurons, resamples=20, seed=0)``"""
    check_int("subspace_stability", "resamples", resamples, low=1)
    sub = _restricted(delta, neurons)
    rng = np.random.RandomState(seed)
    n = sub.shape[0]
    bases = []
    for _ in range(resamples):
        rows = rng.choice(n, n, replace=True)
        _, v, r = _directions(sub[rows], delta.shape[1], cap, energy)
        bases.append(v[:, :r])
    overlaps = [float(((bases[i].T @ bases[j]) ** 2).sum()) / bases[i].shape[1]
                for i in range(resamples) for j in range(i + 1, resamples)]
    return float(np.median(overlaps)) if overlaps else 1.0


def best_window(scores: list[float], *, min_len: int = 3, max_len: int = 6) -> tuple[int, int]:
    """``(first, last)`` position (inclusive) of the contiguous run of ``min_len``..``max_len`` entries with the
    largest summed score; a later run must be strictly larger (ties: the earlier, then the shorter) — PhotonTJ/
    NeuralFoxP2 neural_foxp2/stage2.py, find_best_contiguous_window.

    Example: ``best_window([0.1, 0.5, 0.9, 0.8, 0.2], min_len=2, max_len=3)  # (1, 3)``"""
    n = len(scores)
    if not 1 <= min_len <= max_len:
        raise config_error("best_window", "min_len", f"1 <= min_len <= max_len={max_len}", min_len)
    if n < min_len:
        raise config_error("best_window", "scores", f"at least min_len={min_len} layers", n)
    best, where = -1.0, (0, min_len - 1)
    for start in range(n):
        for end in range(start + min_len - 1, min(start + max_len, n)):
            total = sum(scores[start:end + 1])
            if total > best:
                best, where = total, (start, end)
    return where


def normalize(v: np.ndarray) -> np.ndarray:
    """v/(‖v‖ + 1e-8) — PhotonTJ/NeuralFoxP2 neural_foxp2/utils.py, normalize_vector.

    Example: ``normalize(np.array([3.0, 4.0]))  # array([0.6, 0.8])``"""
    return v / (np.linalg.norm(v) + NORMALIZE_EPS)


def prototypes(z_en: torch.Tensor, z_tgt: torch.Tensor, z_weak: torch.Tensor, neurons: list[int],
               v_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ_tgt, μ_en, P) ``[F]``, ``[F]``, ``[F, F]`` — PhotonTJ/NeuralFoxP2 neural_foxp2/stage3.py,
    compute_target_prototype, compute_english_attractor and run_stage3:
    μ_tgt = normalize(P·normalize(mean over pairs of (z_tgt − z_en) on the neurons)),
    μ_en = normalize(P·normalize(mean over the English "weak" prompts ``z_weak`` of z on the neurons)),
    P = V_r V_rᵀ with V_r ``[F, r]`` from :func:`steering_directions`.

    Example: ``mu_tgt, mu_en, projector = prototypes(z_en, z_es, z_weak, neurons, v_r)``"""
    f = z_en.shape[1]
    if z_tgt.shape != z_en.shape or z_weak.ndim != 2 or z_weak.shape[1] != f or v_r.ndim != 2 or v_r.shape[0] != f:
        raise shape_error("prototypes", "z_tgt", f"[N, {f}] like z_en, z_weak [M, {f}], v_r [{f}, r]",
                          (tuple(z_tgt.shape), tuple(z_weak.shape), tuple(v_r.shape)))
    mask = np.zeros(f)
    mask[np.asarray(neurons, dtype=int)] = 1.0
    shift = ((z_tgt.double() - z_en.double()).cpu().numpy() * mask).mean(0)
    attractor = (z_weak.double().cpu().numpy() * mask).mean(0)
    v = v_r.double().cpu().numpy()
    p = v @ v.T
    mu_tgt, mu_en = normalize(p @ normalize(shift)), normalize(p @ normalize(attractor))
    return torch.from_numpy(mu_tgt), torch.from_numpy(mu_en), torch.from_numpy(p)


def reference_shift(z: torch.Tensor, mu_tgt: torch.Tensor, mu_en: torch.Tensor, projector: torch.Tensor,
                    neurons: list[int], *, lam: float, beta: float) -> torch.Tensor:
    """``[B, F]`` Δz = λ·μ_tgt − β·P(⟨z, μ_en⟩μ_en), kept on ``neurons`` (zero elsewhere), for each row of the SAE
    codes ``z`` ``[B, F]`` — PhotonTJ/NeuralFoxP2 neural_foxp2/stage3.py, Stage3InterventionHook. (The reference's
    hook encodes only the first row of a batch and applies its Δz to every row; here each row gets its own, which is
    the same for a batch of one.) Computed in float64.

    Example: ``reference_shift(z, mu_tgt, mu_en, projector, neurons, lam=1.0, beta=0.5)``"""
    f = z.shape[-1]
    if mu_tgt.shape != (f,) or mu_en.shape != (f,) or projector.shape != (f, f):
        raise shape_error("reference_shift", "mu_tgt", f"[{f}] prototypes and a [{f}, {f}] projector",
                          (tuple(mu_tgt.shape), tuple(mu_en.shape), tuple(projector.shape)))
    if not neurons:
        raise config_error("reference_shift", "neurons", "at least one language neuron", "an empty set")
    zd, en, p = z.double(), mu_en.double().to(z.device), projector.double().to(z.device)
    neg = (zd @ en)[:, None] * (p @ en)[None, :]
    dz = lam * mu_tgt.double().to(z.device)[None, :] - beta * neg
    out = torch.zeros_like(dz)
    idx = torch.tensor(sorted(set(neurons)), device=z.device)
    out[:, idx] = dz[:, idx]
    return out


def sparse_shift(z: torch.Tensor, mu_tgt: torch.Tensor, mu_en: torch.Tensor, mask: torch.Tensor, *, lam: float,
                 beta: float) -> torch.Tensor:
    """Δz = λ·μ_tgt − β·⟨z, μ̂_en⟩μ̂_en restricted to the units in ``mask`` (``[d]`` bool), zero elsewhere, with μ̂_en
    μ_en restricted to the mask and normalised — the steering rule without the stage-II projector (a general tool;
    the analysis uses :func:`reference_shift`).

    Example: ``sparse_shift(z, mu_tgt, mu_en, mask, lam=1.0, beta=0.5)``"""
    d = z.shape[-1]
    if mu_tgt.shape != (d,) or mu_en.shape != (d,) or mask.shape != (d,):
        raise shape_error("sparse_shift", "mu_tgt", f"[{d}] vectors and mask", (tuple(mu_tgt.shape),
                                                                                tuple(mu_en.shape), tuple(mask.shape)))
    if not bool(mask.any()):
        raise config_error("sparse_shift", "mask", "at least one language neuron", "an empty set")
    m = mask.to(z.dtype)
    tgt = mu_tgt.to(z.dtype) * m
    en = mu_en.to(z.dtype) * m
    norm = en.norm()
    en_hat = en / norm if float(norm) > 0 else en
    return lam * tgt - beta * (z * m @ en_hat)[..., None] * en_hat
