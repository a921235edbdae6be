"""Parity of :mod:`workbench.intervene.language` (and the token sets of :mod:`workbench.tasks.language`) with the
reference code PhotonTJ/NeuralFoxP2: each ``ref_*`` below is an independent numpy transcription of a reference
function, written from the reference source (not from our implementation), run on small synthetic inputs with ties;
agreement to 1e-8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.intervene.language import (
    best_window,
    causal_lift,
    eigengap,
    energy_erank,
    prototypes,
    rank_language_neurons,
    reference_shift,
    selectivity,
    steering_directions,
    steering_rank,
    subspace_stability,
    top_mass,
    top_selective,
)
from workbench.tasks.language import unicode_token_ids

TOL = 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# transcriptions of the reference (numpy), function by function


def ref_compute_selectivity(z_en, z_tgt, eps=1e-6):  # neural_foxp2/utils.py, compute_selectivity
    mean_diff = z_tgt.mean(axis=0) - z_en.mean(axis=0)
    std_sum = z_tgt.std(axis=0) + z_en.std(axis=0) + eps
    return mean_diff / std_sum


def ref_lift(deltas_per_alpha, alphas):  # neural_foxp2/stage1.py, compute_feature_lift (its slopes and median)
    slopes = [np.mean(d) / a for d, a in zip(deltas_per_alpha, alphas)]
    return float(np.median(slopes))


def ref_stage1_select(selectivity, lifts_of, top_k):  # neural_foxp2/stage1.py, run_stage1 (Stage I-B/C)
    top_idx = np.argsort(selectivity)[-top_k:]
    feature_lifts = {j: lifts_of(j) for j in top_idx}
    S = np.maximum(selectivity[top_idx], 0)
    C = np.maximum(np.array([feature_lifts[j] for j in top_idx]), 0)
    joint_scores = S * C
    ranked_indices = np.argsort(joint_scores)[::-1]
    ranked_features = top_idx[ranked_indices]
    ranked_scores = joint_scores[ranked_indices]
    return top_idx, [int(j) for j, score in zip(ranked_features, ranked_scores) if score > 0]


def ref_compute_effective_rank(singular_values):  # neural_foxp2/stage2.py, compute_effective_rank
    s2 = singular_values ** 2
    total = s2.sum()
    if total < 1e-10:
        return 1
    p = s2 / total
    p = p[p > 1e-10]
    entropy = -np.sum(p * np.log(p))
    return np.exp(entropy)


def ref_find_eigengap(singular_values, r_max):  # neural_foxp2/stage2.py, find_eigengap
    if len(singular_values) < 2:
        return 1
    gaps = singular_values[:-1] / (singular_values[1:] + 1e-10)
    gaps = gaps[:r_max]
    return int(np.argmax(gaps)) + 1


def ref_compute_steering_directions(delta_Z, r_max=12):  # neural_foxp2/stage2.py, compute_steering_directions
    U, S, Vt = np.linalg.svd(delta_Z, full_matrices=False)
    r_eff = int(np.ceil(ref_compute_effective_rank(S)))
    r_eff = min(r_eff, r_max)
    r_gap = ref_find_eigengap(S, r_max)
    r = min(r_eff, r_gap)
    r = max(r, 1)
    return S, Vt.T, r


def ref_compute_language_shift_matrix(z_en, z_tgt, language_neurons):  # stage2.py, compute_language_shift_matrix
    idx = np.asarray(language_neurons, dtype=int)
    rows = []
    for e, t in zip(z_en, z_tgt):
        delta_z = t - e
        restricted = np.zeros_like(delta_z)
        restricted[idx] = delta_z[idx]
        rows.append(restricted)
    return np.stack(rows)


def ref_compute_spectral_mass(singular_values, r):  # neural_foxp2/stage2.py, compute_spectral_mass
    s2 = singular_values ** 2
    return s2[:r].sum() / (s2.sum() + 1e-10)


def ref_compute_stability_bootstrap(delta_Z, n_bootstrap=20):  # neural_foxp2/stage2.py, compute_stability_bootstrap
    n = delta_Z.shape[0]
    projectors = []
    for _ in range(n_bootstrap):
        idx = np.random.choice(n, n, replace=True)
        sample = delta_Z[idx]
        S, V, r = ref_compute_steering_directions(sample)
        V_r = V[:, :r]
        projectors.append(V_r @ V_r.T)
    consistencies = []
    for i in range(len(projectors)):
        for j in range(i + 1, len(projectors)):
            trace = np.trace(projectors[i] @ projectors[j])
            consistencies.append(trace / np.trace(projectors[i]))
    return np.median(consistencies) if consistencies else 1.0


def ref_find_best_contiguous_window(layer_results, min_window=3, max_window=6):  # stage2.py
    layers = sorted(layer_results.keys())
    best_window, best_score = None, -1
    for start_idx in range(len(layers)):
        for end_idx in range(start_idx + min_window - 1, min(start_idx + max_window, len(layers))):
            window = layers[start_idx:end_idx + 1]
            score = sum(layer_results[l]["score"] for l in window)
            if score > best_score:
                best_score, best_window = score, window
    return best_window, best_score


def ref_normalize_vector(v, eps=1e-8):  # neural_foxp2/utils.py, normalize_vector
    return v / (np.linalg.norm(v) + eps)


def ref_prototypes(z_en, z_tgt, z_weak, language_neurons, V):
    """neural_foxp2/stage3.py, compute_target_prototype + compute_english_attractor + the projection in run_stage3."""
    idx = np.asarray(language_neurons, dtype=int)
    shifts = []
    for e, t in zip(z_en, z_tgt):
        shift = np.zeros_like(e)
        shift[idx] = t[idx] - e[idx]
        shifts.append(shift)
    mu_tgt = ref_normalize_vector(np.stack(shifts).mean(0))
    acts = []
    for z in z_weak:
        zr = np.zeros_like(z)
        zr[idx] = z[idx]
        acts.append(zr)
    mu_en = ref_normalize_vector(np.stack(acts).mean(0))
    P = V @ V.T
    return ref_normalize_vector(P @ mu_tgt), ref_normalize_vector(P @ mu_en), P


def ref_hook_delta(z, mu_tgt, mu_en, P, language_neurons, lambda_val, beta_val):
    """neural_foxp2/stage3.py, Stage3InterventionHook.make_hook.hook (one row z; returns z_delta)."""
    proj_coef = np.dot(z, mu_en)
    neg_dir = P @ (proj_coef * mu_en)
    delta_z = lambda_val * mu_tgt - beta_val * neg_dir
    z_delta = np.zeros_like(z)
    ln = np.asarray(sorted(language_neurons), dtype=int)
    z_delta[ln] = delta_z[ln]
    return z_delta


def ref_build_language_token_sets(tokenizer, unicode_ranges):
    """neural_foxp2/data.py, build_language_token_sets with languages.py, LanguageConfig.is_target_token."""
    def is_target_token(tok):
        return any(any(start <= ord(ch) <= end for start, end in unicode_ranges) for ch in tok)
    V_tgt, V_en = set(), set()
    for tok_id in range(tokenizer.vocab_size):
        tok = tokenizer.convert_ids_to_tokens(tok_id)
        if tok is None:
            continue
        if is_target_token(tok):
            V_tgt.add(tok_id)
        elif all(ch.isascii() for ch in tok) and any(ch.isalpha() for ch in tok):
            V_en.add(tok_id)
    return list(V_tgt), list(V_en)


# ---------------------------------------------------------------------------------------------------------------------
# synthetic inputs


def _codes(seed: int, n: int = 9, f: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative sparse "SAE codes" with exact zeros and repeated rows (ties)."""
    rng = np.random.default_rng(seed)
    z_en = np.maximum(rng.normal(size=(n, f)), 0)
    z_tgt = np.maximum(rng.normal(size=(n, f)) + 0.3, 0)
    z_tgt[1] = z_tgt[0]
    z_en[1] = z_en[0]  # a repeated pair
    return z_en, z_tgt


NEURON_SETS = [[3, 0, 7, 11], [5], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [2, 9]]


def test_selectivity_matches_compute_selectivity():
    """utils.py, compute_selectivity — including equal columns (ties) and constant columns (σ = 0)."""
    z_en, z_tgt = _codes(0)
    z_en[:, 4] = z_tgt[:, 4] = 0.0
    z_tgt[:, 6] = z_tgt[:, 5]
    z_en[:, 6] = z_en[:, 5]
    ours = selectivity(torch.from_numpy(z_tgt), torch.from_numpy(z_en)).cpu().numpy()
    assert np.allclose(ours, ref_compute_selectivity(z_en, z_tgt), rtol=0, atol=TOL)


def test_causal_lift_matches_compute_feature_lift():
    """stage1.py, compute_feature_lift: median over α of mean(ΔM)/α (even count of α: the two middles averaged)."""
    rng = np.random.default_rng(1)
    alphas = [0.5, 1.0, 2.0, 5.0, 10.0, 15.0]
    deltas = rng.normal(size=(6, 8))
    deltas[2] = deltas[1] * 2  # a tie among the slopes
    ours = float(causal_lift(torch.from_numpy(deltas.mean(1)), torch.tensor(alphas)))
    assert abs(ours - ref_lift(list(deltas), alphas)) < TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stage1_selection_matches_run_stage1(seed):
    """stage1.py, run_stage1: top-k by np.argsort(sel)[-k:], joint = max(Sel,0)·max(lift,0), descending by
    np.argsort(joint)[::-1], joint > 0 kept. Ties in selectivity and in joint scores, zeros and negatives."""
    rng = np.random.default_rng(seed)
    sel = np.round(rng.normal(size=30), 1)  # rounding makes ties
    lifts = {j: float(np.round(rng.normal(), 1)) for j in range(30)}
    lifts[int(np.argmax(sel))] = 0.0
    ref_top, ref_neurons = ref_stage1_select(sel, lifts.get, 12)
    top = top_selective(torch.from_numpy(sel), 12)
    assert top == [int(j) for j in ref_top]
    neurons, scores = rank_language_neurons(top, torch.from_numpy(sel), torch.tensor([lifts[j] for j in top]))
    assert neurons == ref_neurons and all(s > 0 for s in scores)


@pytest.mark.parametrize("s", [
    [2.0, 1.0], [5.0, 5.0, 5.0, 0.1, 0.1], [4.0, 3.0, 2.0, 1.5, 0.0, 0.0], [1.0] * 20, [3.0, 3.0, 1.0, 1.0],
    [1.0], [0.0, 0.0, 0.0], [9.0, 3.0, 1.0] + [0.5] * 15 + [0.0],
])
def test_rank_rule_matches_compute_steering_directions(s):
    """stage2.py, compute_effective_rank, find_eigengap (first 12 gaps), compute_steering_directions' rank and
    compute_spectral_mass — flat spectra (tied gaps), zero tails, a single value, an all-zero spectrum."""
    v = np.array(s)
    assert abs(energy_erank(torch.tensor(v)) - float(ref_compute_effective_rank(v))) < TOL
    assert eigengap(torch.tensor(v), 12) == ref_find_eigengap(v, 12)
    r_ref = max(min(min(int(np.ceil(ref_compute_effective_rank(v))), 12), ref_find_eigengap(v, 12)), 1)
    assert steering_rank(torch.tensor(v)) == r_ref
    assert abs(top_mass(torch.tensor(v), r_ref) - ref_compute_spectral_mass(v, r_ref)) < TOL


@pytest.mark.parametrize("neurons", NEURON_SETS)
def test_steering_directions_match_the_full_width_svd(neurons):
    """stage2.py, compute_language_shift_matrix + compute_steering_directions: singular values, rank and the
    projector V_r V_rᵀ of the zero-padded full-width ΔZ."""
    z_en, z_tgt = _codes(3)
    delta_ref = ref_compute_language_shift_matrix(z_en, z_tgt, neurons)
    s_ref, v_ref, r_ref = ref_compute_steering_directions(delta_ref)
    s, v_r, r = steering_directions(torch.from_numpy(z_tgt - z_en), neurons)
    assert r == r_ref and np.allclose(s.cpu().numpy(), s_ref, rtol=0, atol=TOL)
    p_ref = v_ref[:, :r_ref] @ v_ref[:, :r_ref].T
    assert np.allclose(v_r.cpu().numpy() @ v_r.cpu().numpy().T, p_ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("neurons", NEURON_SETS)
@pytest.mark.parametrize("seed", [0, 7])
def test_stability_matches_compute_stability_bootstrap(neurons, seed):
    """stage2.py, compute_stability_bootstrap: the same resampled rows (numpy's legacy generator seeded alike; the
    draws repeat rows), r re-chosen per resample, median of tr(PᵢPⱼ)/tr(Pᵢ) over the 190 pairs of 20."""
    z_en, z_tgt = _codes(4 + seed)
    delta_ref = ref_compute_language_shift_matrix(z_en, z_tgt, neurons)
    np.random.seed(seed)
    expected = float(ref_compute_stability_bootstrap(delta_ref, 20))
    ours = subspace_stability(torch.from_numpy(z_tgt - z_en), neurons, resamples=20, seed=seed)
    assert abs(ours - expected) < TOL


@pytest.mark.parametrize("scores", [
    [0, 0, 1, 5, 5, 5, 0, 0, 0], [1] * 8, [0, 1, 1, 1, 0], [0.2, 0.3, 0.3, 0.2, 0.0, 0.5, 0.5], [0.0] * 5,
    [3, 0, 0, 3, 0, 0, 3], [0.1, 0.2, 0.3],
])
def test_window_matches_find_best_contiguous_window(scores):
    """stage2.py, find_best_contiguous_window: strict improvement, so ties keep the earlier then the shorter run."""
    layers = list(range(4, 4 + len(scores)))
    ref_window, _ = ref_find_best_contiguous_window({l: {"score": s} for l, s in zip(layers, scores)})
    first, last = best_window(list(scores))
    assert [layers[first], layers[last]] == [ref_window[0], ref_window[-1]]
    assert layers[first:last + 1] == ref_window


@pytest.mark.parametrize("neurons", NEURON_SETS)
def test_prototypes_match_run_stage3(neurons):
    """stage3.py, compute_target_prototype, compute_english_attractor and run_stage3's projection into the
    stage-II subspace (P = V_r V_rᵀ)."""
    z_en, z_tgt = _codes(5)
    z_weak = np.maximum(np.random.default_rng(6).normal(size=(7, z_en.shape[1])), 0)
    _, v_ref, r_ref = ref_compute_steering_directions(ref_compute_language_shift_matrix(z_en, z_tgt, neurons))
    t_ref, e_ref, p_ref = ref_prototypes(z_en, z_tgt, z_weak, neurons, v_ref[:, :r_ref])
    _, v_r, _ = steering_directions(torch.from_numpy(z_tgt - z_en), neurons)
    mu_tgt, mu_en, proj = prototypes(torch.from_numpy(z_en), torch.from_numpy(z_tgt), torch.from_numpy(z_weak),
                                     neurons, v_r)
    # the sign of each singular vector is arbitrary, P (and so μ) is not
    assert np.allclose(proj.cpu().numpy(), p_ref, rtol=0, atol=TOL)
    assert np.allclose(mu_tgt.cpu().numpy(), t_ref, rtol=0, atol=TOL) and np.allclose(mu_en.cpu().numpy(), e_ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("lam, beta", [(0.5, 0.0), (1.0, 0.5), (4.0, 4.0), (0.0, 0.0)])
def test_hook_delta_matches_stage3_intervention_hook(lam, beta):
    """stage3.py, Stage3InterventionHook: Δz = λμ_tgt − β·P(⟨z, μ_en⟩μ_en) on the sorted language neurons, and
    Δh = SAE.decode(Δz) = Δz·Wᵀ of the tied, bias-free reference decoder (here W_dec = Wᵀ, rows of [F, d])."""
    neurons = [7, 3, 0, 11]
    z_en, z_tgt = _codes(8)
    _, v_ref, r_ref = ref_compute_steering_directions(ref_compute_language_shift_matrix(z_en, z_tgt, neurons))
    t_ref, e_ref, p_ref = ref_prototypes(z_en, z_tgt, z_en, neurons, v_ref[:, :r_ref])
    rows = np.maximum(np.random.default_rng(9).normal(size=(3, z_en.shape[1])), 0) * 40  # raw-scale codes
    rows[2] = rows[1]
    ours = reference_shift(torch.from_numpy(rows), torch.from_numpy(t_ref), torch.from_numpy(e_ref),
                           torch.from_numpy(p_ref), neurons, lam=lam, beta=beta).cpu().numpy()
    w = np.random.default_rng(10).normal(size=(6, z_en.shape[1]))  # the reference's W [d, F]
    for row, got in zip(rows, ours):
        want = ref_hook_delta(row, t_ref, e_ref, p_ref, neurons, lam, beta)
        assert np.allclose(got, want, rtol=0, atol=TOL)
        assert np.allclose(got @ w.T, want @ w.T, rtol=0, atol=TOL)  # decode: Δh = Δz @ W_dec, W_dec = W.T


class _RawTokenizer:
    """A stand-in for a Hugging Face tokenizer: raw token strings by id (None: an id without a token)."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.vocab_size = len(tokens) - 1  # the last one plays an added token beyond vocab_size

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids] if isinstance(ids, list) else self.tokens[ids]


def test_unicode_token_sets_match_build_language_token_sets():
    """data.py, build_language_token_sets (languages.py, is_target_token; Spanish ranges U+00C0–00FF, U+0100–024F):
    byte-level "Ġ" (U+0120) counts as Spanish, SentencePiece "▁" as neither, digits and empty strings as neither."""
    tokens = ["hola", "Ġthe", "▁the", "é", "niño", "123", "", None, "<0xC3>", "ÿ", "ɏ", "ɐ", "À", "¿", "the's",
              "Ċ", "▁año", "<eos>"]
    tok = _RawTokenizer(tokens)
    en, es = unicode_token_ids(tok)
    ref_es, ref_en = ref_build_language_token_sets(tok, [(0x00C0, 0x00FF), (0x0100, 0x024F)])
    assert en == sorted(ref_en) and es == sorted(ref_es)
    assert 1 in es and 2 not in es + en and len(tokens) - 1 not in en  # Ġ, ▁ and the added token
