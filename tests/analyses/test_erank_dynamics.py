"""erank_dynamics: erv_era against an independent per-prefix SVD of VERL's formula, and the model-level analysis."""

from __future__ import annotations

import math

import pytest
import torch

import analyses.erank_dynamics as ed
from analyses.erank_dynamics import ErankDynamicsConfig, ErankDynamicsResult, erv_era, rank_dynamics
from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError, ShapeError
from workbench.runner import run_analysis


def _reference(h: torch.Tensor, stride: int, max_seq_len: int, center: bool = True):
    """VERL's recipe written out directly: svdvals of each (centred) prefix, ER, then Δ / Δ² means, in float64."""
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


def _hidden(n_tokens=97, d=24, shift=5.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    # growing rank over the response, plus a large mean (the cancellation case for G − kμμᵀ)
    basis = torch.randn(d, d, generator=g)
    coef = torch.randn(n_tokens, d, generator=g) * torch.linspace(0.05, 1.0, d).flip(0)
    return coef @ basis + shift * torch.randn(d, generator=g)


@pytest.mark.parametrize("n_tokens,d,stride,max_seq_len", [(97, 24, 10, 512), (97, 24, 7, 60), (40, 64, 10, 512)])
def test_matches_direct_per_prefix_svd(n_tokens, d, stride, max_seq_len):
    h = _hidden(n_tokens, d)
    out = erv_era(h, stride=stride, max_seq_len=max_seq_len)
    ers, erv, era = _reference(h, stride, max_seq_len)
    assert out.ks == list(range(stride, min(n_tokens, max_seq_len) + 1, stride))
    assert out.erank_t[0] == pytest.approx(ers, rel=2e-6)
    assert out.erv[0] == pytest.approx(erv, rel=1e-4, abs=1e-5)
    assert out.era[0] == pytest.approx(era, rel=1e-4, abs=1e-5)


def test_uncentred_matches_uncentred_reference_and_differs():
    h = _hidden()
    raw = erv_era(h, stride=10, center=False)
    ers, erv, era = _reference(h, 10, 512, center=False)
    assert raw.erank_t[0] == pytest.approx(ers, rel=2e-6)
    assert raw.erv[0] == pytest.approx(erv, rel=1e-4, abs=1e-5)
    assert raw.era[0] == pytest.approx(era, rel=1e-4, abs=1e-5)
    centred = erv_era(h, stride=10)
    assert abs(raw.erank_t[0][-1] - centred.erank_t[0][-1]) > 0.5


def test_all_layers_at_once_equal_per_layer_calls():
    h = torch.stack([_hidden(seed=s) for s in range(3)])
    both = erv_era(h, stride=10)
    for layer in range(3):
        one = erv_era(h[layer], stride=10)
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
    """Orthogonal equal-norm tokens e_1..e_k uncentred have ER_k = k exactly: ER = 2, 4, 6 -> ERV 2.5, ERA 1."""
    h = torch.eye(8)[:6]
    out = erv_era(h, stride=2, center=False)
    assert out.erank_t[0] == pytest.approx([2.0, 4.0, 6.0], rel=1e-5)
    assert out.erv[0] == pytest.approx((4 - 2 + 6 - 3) / 2, rel=1e-5)
    assert out.era[0] == pytest.approx(1.0, rel=1e-4)


def test_short_input_leaves_era_undefined():
    out = erv_era(_hidden(25), stride=10)
    assert out.ks == [10, 20] and not math.isnan(out.erv[0]) and math.isnan(out.era[0])


@pytest.mark.parametrize("kwargs,param,error", [
    ({"stride": 0}, "'stride'", ConfigError), ({"stride": -3}, "'stride'", ConfigError),
    ({"stride": 10, "max_seq_len": 5}, "'max_seq_len'", ConfigError),
    ({"hidden": torch.zeros(5)}, "'hidden'", ShapeError), ({"hidden": torch.zeros(1, 2, 30, 4)}, "'hidden'", ShapeError),
    ({"hidden": torch.zeros(9, 4)}, "'hidden'", ShapeError),
    ({"hidden": torch.full((30, 4), math.nan)}, "'hidden'", ShapeError),
    ({"hidden": torch.tensor([[math.inf, 0.0]] * 30)}, "'hidden'", ShapeError),
])
def test_errors_name_the_parameter(kwargs, param, error):
    kwargs = {"hidden": _hidden(30, 4), "stride": 10, **kwargs}
    with pytest.raises(error, match=param):
        erv_era(kwargs.pop("hidden"), **kwargs)


@pytest.mark.parametrize("field,value", [("prompt", ""), ("response", ""), ("max_new_tokens", 0), ("do_sample", 1),
                                         ("temperature", 0.0), ("stride", 0), ("max_seq_len", 10),
                                         ("center", "yes"), ("chat_template", None)])
def test_bad_config(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        ErankDynamicsConfig(**{field: value})


RESPONSE = "First, 17 - 9 = 8? No: all but 9 run away, so 9 remain. Then he buys 18 more, so 27 sheep."


def test_given_response_on_tiny_model(tiny_model):
    config = ErankDynamicsConfig(response=RESPONSE, stride=10, chat_template=False)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    assert result.n_response_tokens == len(RESPONSE)  # char-level tokenizer: one token per character
    assert result.ks == list(range(10, len(RESPONSE) + 1, 10))
    assert len(result.erank_t) == len(result.erv) == len(result.era) == tiny_model.n_layers
    assert all(len(row) == len(result.ks) for row in result.erank_t)
    assert result.response == RESPONSE and not result.generated
    assert ErankDynamicsResult.from_json(result.to_json()) == result
    assert "<table" in result._repr_html_() and len(result.figures()) == 2


def test_given_response_equals_erv_era_on_its_hidden_states(tiny_model):
    config = ErankDynamicsConfig(response=RESPONSE, stride=10, chat_template=False)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    tokens = tiny_model.model.to_tokens(config.prompt + RESPONSE, truncate=False)
    n_prompt = tiny_model.model.to_tokens(config.prompt, truncate=False).shape[1]
    _, cache = tiny_model.model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    h = torch.stack([cache[f"blocks.{i}.hook_resid_post"][0, n_prompt:] for i in range(tiny_model.n_layers)])
    direct = erv_era(h, stride=10)
    for got, want in zip(result.erank_t, direct.erank_t, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
    assert result.erv == pytest.approx(direct.erv, rel=1e-4)


def test_generation_on_tiny_model(tiny_model):
    config = ErankDynamicsConfig(max_new_tokens=45, stride=10)
    result = run_analysis(tiny_model, "erank_dynamics", config)
    assert result.generated and 1 <= result.n_response_tokens <= 45
    assert result.ks == list(range(10, result.n_response_tokens + 1, 10))
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

    monkeypatch.setattr(ed, "erv_era", boom)
    with pytest.raises(RuntimeError, match="boom"):
        run_analysis(tiny_model, "erank_dynamics", ErankDynamicsConfig(response=RESPONSE, stride=10))
    assert count_hooks(tiny_model.hook_points()) == 0


def test_response_shorter_than_stride_raises_and_leaves_no_hooks(tiny_model):
    with pytest.raises(ShapeError, match="'response'"):
        run_analysis(tiny_model, "erank_dynamics", ErankDynamicsConfig(response="ab", stride=10))
    assert count_hooks(tiny_model.hook_points()) == 0


@pytest.mark.slow
def test_bundled_model_100_greedy_tokens(real_model):
    config = ErankDynamicsConfig(max_new_tokens=100, stride=20)
    result = run_analysis(real_model, "erank_dynamics", config)
    assert result.generated and result.n_response_tokens >= 60, result.response
    assert len(result.erv) == 30
    assert all(v is not None and math.isfinite(v) for v in result.erv)
    for layer in (0, 15, 29):
        print(f"layer {layer}: ERV {result.erv[layer]:.4f}, ERA {result.era[layer]}, ER {result.erank_t[layer]}")
    print(result.n_response_tokens, repr(result.response), result.summary())
