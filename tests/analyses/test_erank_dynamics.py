"""erank_dynamics: erv_era against numpy transcriptions of hf618/VERL's two code paths and a per-prefix SVD, and
the model-level analysis (final-norm headline, per-block extension)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import workbench_analyses.erank_dynamics as ed
from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError
from workbench.runner import run_analysis
from workbench.spectra import dynamics
from workbench.spectra.dynamics import erv_era, rank_dynamics
from workbench_analyses.erank_dynamics import ErankDynamicsConfig, ErankDynamicsResult


def _reference(h: torch.Tensor, stride: int, max_seq_len: int, center: bool = True):
    """The batched variant's recipe written out directly: svdvals of each (centred) first-k prefix, ER, then Δ / Δ²
    means, in float64."""
    k_max = min(h.shape[0], max_seq_len)
    ers = []
    for k in range(stride, k_max + 1, stride):
        x = h[:k].double()
        x = x - x.mean(0) if center else x
        s = torch.linalg.svdvals(x)
        p = s / (s.sum() + 1e-8)
        ers.append(float(torch.exp(-(p * torch.log(p + 1e-8)).sum())))
    deltas = [ers[i] - sum(ers[:i]) / i for i in range(1, len(ers))]
    diff2 = [b - a for a, b in zip(deltas, deltas[1:])]
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    return ers, mean(deltas), mean(diff2)


def _np_verl_optimized(valid_hidden: np.ndarray, max_seq_len: int, stride: int, dtype=np.float32):
    """numpy transcription of hf618/VERL verl/trainer/metrics_utils.py ``calculate_diffs_for_single_sample_optimized``
    with ``selected_metric_names=["Effective Rank"]`` (and ``_get_metrics_from_eigenvalues``), float32 as there:
    the last max_seq_len tokens; windows H[:t+1], t in range(stride, valid_len, stride); the centred Gram built
    incrementally (U, C12, C22, s); eigvalsh; S = sqrt(relu(eig)); p = S/(S.sum()+1e-8); ER = exp(-sum p log(p+1e-8));
    diff = ER - history_sum/history_count; diff2 = diff - prev_diff. Returns (ERs, diffs, diff2s). ``dtype``:
    float32 is VERL's; float64 runs the same steps without its round-off."""
    valid_len = valid_hidden.shape[0]
    if valid_len > max_seq_len:
        valid_hidden = valid_hidden[-max_seq_len:]
        valid_len = max_seq_len
    ers, diffs, diff2s = [], [], []
    if valid_len < 2 * stride:
        return ers, diffs, diff2s
    history_sum, history_count, prev_diff = 0.0, 0, None
    s = np.zeros((1, valid_hidden.shape[1]), dtype=dtype)
    U, H_old = None, None
    for t in range(stride, valid_len, stride):
        cur = valid_hidden[: t + 1].astype(dtype)
        new_chunk = cur[len(H_old) if H_old is not None else 0:]
        s = s + new_chunk.sum(axis=0, keepdims=True)
        if U is None:
            U = new_chunk @ new_chunk.T
        else:
            C12 = H_old @ new_chunk.T
            C22 = new_chunk @ new_chunk.T
            U = np.concatenate([np.concatenate([U, C12], 1), np.concatenate([C12.T, C22], 1)], 0)
        k = cur.shape[0]
        mean_vec = s / k
        mean_gram = mean_vec @ mean_vec.T
        hs_T = cur @ s.T / k
        ones_k = np.ones((k, 1), dtype=dtype)
        G = U - hs_T @ ones_k.T - ones_k @ hs_T.T + mean_gram
        eig = np.linalg.eigvalsh(G)
        S = np.sqrt(np.maximum(eig, 0))
        p = S / (S.sum() + dtype(1e-8))
        er = float(np.exp(-np.sum(p * np.log(p + dtype(1e-8)))))
        ers.append(er)
        if history_count > 0:
            diff = er - history_sum / history_count
            diffs.append(diff)
            if prev_diff is not None:
                diff2s.append(diff - prev_diff)
            prev_diff = diff
        history_sum += er
        history_count += 1
        H_old = cur
    return ers, diffs, diff2s


def _np_verl_batched(hidden: np.ndarray, max_seq_len: int, stride: int, dtype=np.float32):
    """numpy transcription of ``_calculate_diffs_batched_single_device`` (the later batched VERL metrics_utils.py,
    Effective Rank only, one unpadded sample, no ``base_metrics_batch``), float32 as there: the first
    K = min(T, max_seq_len) tokens; k_t in range(stride, K + 1, stride); centred H_t; L-mode Gram HcHcᵀ when
    k_t < D else D-mode HcᵀHc; eigvalsh; ``batched_effective_rank``; avg_prev = hist_sum/(cnt + 1e-8). ``dtype`` as
    in :func:`_np_verl_optimized`."""
    eps = 1e-8
    k_max = min(hidden.shape[0], max_seq_len)
    ers, diffs, diff2s = [], [], []
    if k_max < 2:
        return ers, diffs, diff2s
    hist_sum, cnt, prev = 0.0, 0.0, None
    for k_t in range(stride, k_max + 1, stride):
        H = hidden[:k_t].astype(dtype)
        Hc = H - H.mean(axis=0, keepdims=True)
        G = Hc @ Hc.T if k_t < hidden.shape[1] else Hc.T @ Hc
        eig = np.linalg.eigvalsh(G)
        S = np.sqrt(np.maximum(eig, 0))
        p = S / (S.sum() + dtype(eps))
        er = float(np.exp(-np.sum(p * np.log(p + dtype(eps)))))
        ers.append(er)
        if cnt > 0:
            diff = er - hist_sum / (cnt + eps)
            diffs.append(diff)
            if prev is not None:
                diff2s.append(diff - prev)
            prev = diff
        hist_sum += er
        cnt += 1.0
    return ers, diffs, diff2s


def _hidden(n_tokens=97, d=24, shift=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # growing rank over the response, plus a large mean (the cancellation case for G − kμμᵀ)
    basis = torch.randn(d, d, generator=g)
    coef = torch.randn(n_tokens, d, generator=g) * torch.linspace(0.05, 1.0, d).flip(0)
    return coef @ basis + shift * torch.randn(d, generator=g)


PARITY_CASES = [(97, 24, 10, 512, 5.0), (200, 64, 20, 512, 5.0), (75, 96, 10, 64, 5.0), (130, 160, 20, 512, 0.5)]


@pytest.mark.parametrize("variant", ["optimized", "batched"])
@pytest.mark.parametrize("n_tokens,d,stride,max_seq_len,shift", PARITY_CASES)
def test_parity_with_numpy_transcription_of_verl_float64(variant, n_tokens, d, stride, max_seq_len, shift):
    """Reference: hf618/VERL verl/trainer/metrics_utils.py ``calculate_diffs_for_single_sample_optimized``
    (variant "optimized") and the later ``_calculate_diffs_batched_single_device`` (variant "batched"), transcribed
    to numpy above and run in float64 (the same steps without float32 round-off). Tolerance 2e-6 relative on ER, not
    1e-8: erv_era computes VERL's entropy step in float32, as VERL does; ERV/ERA (differences of ERs) to 2e-6 × the
    largest ER. Covers prefixes shorter and longer than d, a large mean, and the max_seq_len cut."""
    h = _hidden(n_tokens, d, shift=shift)
    ref = _np_verl_optimized if variant == "optimized" else _np_verl_batched
    ers, diffs, diff2s = ref(h.numpy(), max_seq_len, stride, np.float64)
    out = erv_era(h, stride=stride, max_seq_len=max_seq_len, variant=variant)
    assert out.variant == variant and len(out.ks) == len(ers)
    assert out.erank_t[0] == pytest.approx(ers, rel=2e-6)
    scale = 2e-6 * max(ers)
    assert out.erv[0] == pytest.approx(float(np.mean(diffs)), abs=scale)
    assert out.era[0] == pytest.approx(float(np.mean(diff2s)), abs=scale)


@pytest.mark.parametrize("variant", ["optimized", "batched"])
def test_parity_with_verl_in_its_own_float32(variant):
    """The same transcriptions in float32, VERL's dtype, in VERL's regime (d = 160 > every prefix, as d >= 896 >
    512 there): ER to 1e-4 relative (the reference is float32, we are float64 up to the entropy), ERV/ERA to 1e-4 ×
    the largest ER. (With prefixes longer than d VERL's float32 k×k Gram has k − d round-off eigenvalues whose
    square roots bias its ER by up to 1e-2 here: that is VERL's noise, not the quantity.)"""
    h = _hidden(130, 160, shift=0.5)
    ref = _np_verl_optimized if variant == "optimized" else _np_verl_batched
    ers, diffs, diff2s = ref(h.numpy(), 512, 20)
    out = erv_era(h, stride=20, variant=variant)
    assert out.erank_t[0] == pytest.approx(ers, rel=1e-4)
    assert out.erv[0] == pytest.approx(float(np.mean(diffs)), abs=1e-4 * max(ers))
    assert out.era[0] == pytest.approx(float(np.mean(diff2s)), abs=1e-4 * max(ers))


def test_optimized_takes_the_last_tokens_and_prefixes_t_plus_one():
    h = _hidden(75, 96)
    out = erv_era(h, stride=10, max_seq_len=64)
    assert out.start == 11 and out.n_tokens == 64 and out.ks == [11, 21, 31, 41, 51, 61]
    alone = erv_era(h[11:], stride=10, max_seq_len=64)
    assert alone.erank_t == out.erank_t and alone.start == 0
    batched = erv_era(h, stride=10, max_seq_len=64, variant="batched")
    assert batched.start == 0 and batched.ks == [10, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("n_tokens,d,stride,max_seq_len", [(97, 24, 10, 512), (97, 24, 7, 60), (40, 64, 10, 512)])
def test_batched_matches_direct_per_prefix_svd(n_tokens, d, stride, max_seq_len):
    h = _hidden(n_tokens, d)
    out = erv_era(h, stride=stride, max_seq_len=max_seq_len, variant="batched")
    ers, erv, era = _reference(h, stride, max_seq_len)
    assert out.ks == list(range(stride, min(n_tokens, max_seq_len) + 1, stride))
    assert out.erank_t[0] == pytest.approx(ers, rel=2e-6)
    assert out.erv[0] == pytest.approx(erv, rel=1e-4, abs=1e-5)
    assert out.era[0] == pytest.approx(era, rel=1e-4, abs=1e-5)


def test_uncentred_matches_uncentred_reference_and_differs():
    h = _hidden()
    raw = erv_era(h, stride=10, center=False, variant="batched")
    ers, erv, era = _reference(h, 10, 512, center=False)
    assert raw.erank_t[0] == pytest.approx(ers, rel=2e-6)
    assert raw.erv[0] == pytest.approx(erv, rel=1e-4, abs=1e-5)
    assert raw.era[0] == pytest.approx(era, rel=1e-4, abs=1e-5)
    centred = erv_era(h, stride=10, variant="batched")
    assert abs(raw.erank_t[0][-1] - centred.erank_t[0][-1]) > 0.5


@pytest.mark.parametrize("variant", ["optimized", "batched"])
def test_all_layers_at_once_equal_per_layer_calls(variant):
    h = torch.stack([_hidden(seed=s) for s in range(3)])
    both = erv_era(h, stride=10, variant=variant)
    for layer in range(3):
        one = erv_era(h[layer], stride=10, variant=variant)
        assert both.erank_t[layer] == pytest.approx(one.erank_t[0], rel=1e-6)
        assert both.erv[layer] == pytest.approx(one.erv[0], rel=1e-6)
        assert both.era[layer] == pytest.approx(one.era[0], rel=1e-6)


def test_delta_arithmetic_by_hand():
    deltas, diff2, erv, era = rank_dynamics([1.0, 3.0, 5.0, 4.0])
    # Δ: 3-1 = 2, 5-2 = 3, 4-3 = 1; Δ²: 1, -2
    assert deltas == [2.0, 3.0, 1.0] and diff2 == [1.0, -2.0]
    assert erv == 2.0 and era == -0.5
    assert math.isnan(rank_dynamics([2.0])[2]) and math.isnan(rank_dynamics([2.0, 3.0])[3])


def test_known_ranks_give_known_sequence():
    """Orthogonal equal-norm tokens e_1..e_k uncentred have ER_k = k exactly: ER = 2, 4, 6 -> ERV 2.5, ERA 1
    (batched: k = 2, 4, 6); optimized on 7 tokens: k = 3, 5, 7 -> Δ = 2, 3 -> ERV 2.5, ERA 1."""
    out = erv_era(torch.eye(8)[:6], stride=2, center=False, variant="batched")
    assert out.erank_t[0] == pytest.approx([2.0, 4.0, 6.0], rel=1e-5)
    assert out.erv[0] == pytest.approx((4 - 2 + 6 - 3) / 2, rel=1e-5)
    assert out.era[0] == pytest.approx(1.0, rel=1e-4)
    opt = erv_era(torch.eye(8)[:7], stride=2, center=False)
    assert opt.ks == [3, 5, 7] and opt.erank_t[0] == pytest.approx([3.0, 5.0, 7.0], rel=1e-5)
    assert opt.erv[0] == pytest.approx(2.5, rel=1e-5) and opt.era[0] == pytest.approx(1.0, rel=1e-4)


def test_short_input_leaves_era_undefined():
    out = erv_era(_hidden(25), stride=10, variant="batched")
    assert out.ks == [10, 20] and not math.isnan(out.erv[0]) and math.isnan(out.era[0])
    opt = erv_era(_hidden(25), stride=10)
    assert opt.ks == [11, 21] and not math.isnan(opt.erv[0]) and math.isnan(opt.era[0])


@pytest.mark.parametrize("n_tokens", [1, 9, 19])
def test_optimized_gives_nothing_below_two_strides(n_tokens):
    """VERL's optimized path returns no diffs at all when the response has fewer than 2·stride tokens."""
    out = erv_era(_hidden(n_tokens), stride=10)
    assert out.ks == [] and out.erank_t == [[]] and math.isnan(out.erv[0]) and math.isnan(out.era[0])
    assert erv_era(_hidden(20), stride=10).ks == [11]


@pytest.mark.parametrize("kwargs,param,error", [
    ({"stride": 0}, "'stride'", ConfigError), ({"stride": -3}, "'stride'", ConfigError),
    ({"stride": 10, "max_seq_len": 5}, "'max_seq_len'", ConfigError),
    ({"variant": "original"}, "'variant'", ConfigError), ({"center": 1}, "'center'", ConfigError),
    ({"hidden": torch.zeros(5)}, "'hidden'", ShapeError), ({"hidden": torch.zeros(1, 2, 30, 4)}, "'hidden'", ShapeError),
    ({"hidden": torch.zeros(0, 4)}, "'hidden'", ShapeError),
    ({"hidden": torch.zeros(30, 4, dtype=torch.long)}, "'hidden'", ShapeError),
    ({"hidden": torch.full((30, 4), math.nan)}, "'hidden'", ShapeError),
    ({"hidden": torch.tensor([[math.inf, 0.0]] * 30)}, "'hidden'", ShapeError),
])
def test_errors_name_the_parameter(kwargs, param, error):
    kwargs = {"hidden": _hidden(30, 4), "stride": 10, **kwargs}
    with pytest.raises(error, match=param):
        erv_era(kwargs.pop("hidden"), **kwargs)


def test_erv_era_lives_in_the_library():
    assert erv_era is dynamics.erv_era and ed.ErankDynamics is dynamics.ErankDynamics


@pytest.mark.parametrize("field,value", [("prompt", ""), ("response", ""), ("max_new_tokens", 0), ("do_sample", 1),
                                         ("temperature", 0.0), ("stride", 0), ("max_seq_len", 10),
                                         ("center", "yes"), ("chat_template", None),
                                         ("variant", "original"), ("alignment", "next")])
def test_bad_config(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        ErankDynamicsConfig(**{field: value})


RESPONSE = "First, 17 - 9 = 8? No: all but 9 run away, so 9 remain. Then he buys 18 more, so 27 sheep."


def test_given_response_on_tiny_model(tiny_model):
    config = ErankDynamicsConfig(response=RESPONSE, stride=10, chat_template=False)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    n = len(RESPONSE)  # char-level tokenizer: one token per character
    assert result.n_response_tokens == n and result.variant == "optimized" and result.alignment == "generating"
    assert result.ks == [t + 1 for t in range(10, n, 10)] and len(result.final_erank) == len(result.ks)
    assert result.final_erv is not None and result.final_era is not None
    assert len(result.erank_t) == len(result.erv) == len(result.era) == tiny_model.n_layers
    assert all(len(row) == len(result.ks) for row in result.erank_t)
    assert result.response == RESPONSE and not result.generated
    assert ErankDynamicsResult.from_json(result.to_json()) == result
    header, rows = result.table()
    assert rows[0][0] == "ln_final.hook_out (headline)" and len(rows) == tiny_model.n_layers + 1
    assert "<table" in result._repr_html_() and len(result.figures()) == 3
    assert "variant 'optimized'" in result.summary() and "final-norm" in result.summary()


@pytest.mark.parametrize("alignment,shift", [("generating", 1), ("own", 0)])
@pytest.mark.parametrize("variant", ["optimized", "batched"])
def test_given_response_equals_erv_era_on_its_hidden_states(tiny_model, alignment, shift, variant):
    """The headline is erv_era of ln_final.hook_out (what the LM head reads); "generating" takes the states at
    positions n−1 … n+T−2 (the state that produced each response token, as VERL's vLLM saves them)."""
    config = ErankDynamicsConfig(response=RESPONSE, stride=10, chat_template=False, alignment=alignment,
                                 variant=variant)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    tokens = tiny_model.model.to_tokens(config.prompt + RESPONSE, truncate=False)
    n_prompt = tiny_model.model.to_tokens(config.prompt, truncate=False).shape[1]
    logits, cache = tiny_model.model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("hook_resid_post") or n == "ln_final.hook_out")
    lo, hi = n_prompt - shift, tokens.shape[1] - shift
    final = cache["ln_final.hook_out"][0]
    w_u = tiny_model.model.unembed.W_U if hasattr(tiny_model.model, "unembed") else None
    if w_u is not None:  # the LM head reads exactly this state
        assert torch.allclose(final @ w_u + tiny_model.model.unembed.b_U, logits[0], atol=1e-4)
    direct = erv_era(final[lo:hi], stride=10, variant=variant)
    assert result.final_erank == pytest.approx(direct.erank_t[0], rel=1e-5)
    assert result.final_erv == pytest.approx(direct.erv[0], rel=1e-4)
    h = torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, lo:hi] for i in range(tiny_model.n_layers)])
    blocks = erv_era(h, stride=10, variant=variant)
    for got, want in zip(result.erank_t, blocks.erank_t, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert result.erv == pytest.approx(blocks.erv, rel=1e-4)


def test_generation_on_tiny_model(tiny_model):
    config = ErankDynamicsConfig(max_new_tokens=45, stride=10)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    assert result.generated and 20 <= result.n_response_tokens <= 45
    assert result.ks == [t + 1 for t in range(10, result.n_response_tokens, 10)]
    again = run_analysis(tiny_model, "erank_dynamics", config)
    assert again == result  # greedy: deterministic
    assert ErankDynamicsResult.from_json(result.to_json()) == result
    assert count_hooks(tiny_model.hook_points()) == 0


def test_too_short_summary_says_so(tiny_model):
    config = ErankDynamicsConfig(response=RESPONSE[:25], stride=10, chat_template=False)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    assert result.era == [None] * tiny_model.n_layers and result.erv[0] is not None
    assert "too short to define ERA" in result.summary() and "nan" not in result.summary().lower()


def test_hooks_removed_when_erv_era_raises(tiny_model, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ed.dynamics, "erv_era", boom)
    with pytest.raises(RuntimeError, match="boom"):
        run_analysis(tiny_model, "erank_dynamics", ErankDynamicsConfig(response=RESPONSE, stride=10))
    assert count_hooks(tiny_model.hook_points()) == 0


def test_response_shorter_than_two_strides_raises_and_leaves_no_hooks(tiny_model):
    with pytest.raises(ShapeError, match="'response'.*at least 20 tokens"):
        run_analysis(tiny_model, "erank_dynamics", ErankDynamicsConfig(response="a" * 19, stride=10))
    run_analysis(tiny_model, "erank_dynamics", ErankDynamicsConfig(response="a" * 19, stride=10, variant="batched"))
    assert count_hooks(tiny_model.hook_points()) == 0


@pytest.mark.slow
def test_bundled_model_100_greedy_tokens(real_model):
    config = ErankDynamicsConfig(max_new_tokens=100, stride=20)
    result = run_analysis(real_model, "erank_dynamics", config)
    assert result.generated and result.n_response_tokens >= 60, result.response
    assert len(result.erv) == 30 and result.variant == "optimized"
    assert result.final_erv is not None and math.isfinite(result.final_erv)
    assert all(v is not None and math.isfinite(v) for v in result.erv)
    print(f"final norm: ERV {result.final_erv:.4f}, ERA {result.final_era}, ER {result.final_erank}")
    for layer in (0, 15, 29):
        print(f"layer {layer}: ERV {result.erv[layer]:.4f}, ERA {result.era[layer]}, ER {result.erank_t[layer]}")
    print(result.n_response_tokens, repr(result.response), result.summary())


@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_equals_the_bridge_generate_and_its_recorded_states_a_full_forward(tiny_model, do_sample):
    """The KV-cached loop generates what the bridge's ``generate`` generated (greedy, and sampled with the same seed),
    and the states it records while generating (the step that produced each token) equal response_hidden's full
    forward over prompt + response at positions n−1 … n+T−2."""
    config = ErankDynamicsConfig(max_new_tokens=30, stride=10, do_sample=do_sample, seed=4, temperature=0.8)
    prompt = ed._prompt_tokens(tiny_model, config)
    tokens, (final, blocks) = ed._full_tokens(tiny_model, config, prompt, False)
    torch.manual_seed(4)
    with torch.no_grad():
        ref = tiny_model.model.generate(prompt, max_new_tokens=30, do_sample=do_sample, temperature=0.8,
                                        verbose=False, return_type="tokens")
    assert torch.equal(tokens, ref)
    want_final, want_blocks = ed.response_hidden(tiny_model, tokens, prompt.shape[1])
    assert final.shape == want_final.shape and blocks.shape == want_blocks.shape
    assert torch.allclose(final, want_final, atol=1e-5) and torch.allclose(blocks, want_blocks, atol=1e-5)
    assert count_hooks(tiny_model.hook_points()) == 0
