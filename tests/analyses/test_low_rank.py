"""low_rank on the tiny model: the input sites are the maps' real inputs, the predicted output error equals the error
of the truncated matrix on the calibration rows, the verification really truncates the model and reverts it bit for
bit, and bad configs are named."""

from __future__ import annotations

import json

import pytest
import torch

from workbench.capture import capture
from workbench.errors import ConfigError
from workbench.models.adapters import as_matrix
from workbench.runner import run_analysis
from workbench.spectra.low_rank import second_moment, truncate, truncation_errors
from workbench_analyses.low_rank import LowRankConfig, LowRankResult, split_prompts
from workbench_analyses.low_rank.sites import INPUTS, input_site
from workbench_analyses.low_rank.verify import cost, plain_ranks_of_size, ranks_at

OUTPUTS = {"W_Q": "attn.q.hook_out", "W_K": "attn.k.hook_out", "W_V": "attn.v.hook_out", "W_O": "attn.o.hook_out",
           "W_in": "mlp.in.hook_out", "W_gate": "mlp.gate.hook_out", "W_out": "mlp.out.hook_out"}
TEXTS = ["The cat sat on the mat.", "A short second text about rivers and hills.", "x = 3 + 4", "hello world"]
SMALL = dict(prompts="bundled:prose", max_length=48, verify_budgets=[0.3], budgets=[0.05, 0.2], map_budget=0.05,
             heldout_texts=8)


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_each_input_site_times_its_matrix_is_the_maps_output(tiny_model, kind):
    site = input_site(tiny_model.hook_points(), kind, 1)
    out = f"blocks.1.{OUTPUTS[kind]}"
    cap = capture(tiny_model, TEXTS, sites=[site, out], keep="full")
    w = as_matrix(kind, tiny_model.weight(kind, 1)).detach()
    torch.testing.assert_close(cap[site].full @ w, cap[out].full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["plain", "whitened"])
def test_predicted_error_is_the_truncated_matrix_error_on_the_calibration_rows(tiny_model, method):
    site = input_site(tiny_model.hook_points(), "W_in", 0)
    x = capture(tiny_model, TEXTS * 3, sites=site, keep="full", gram_dtype="float64")
    stats = x[site]
    c = second_moment(stats.mean.double(), stats.comoment.double(), stats.n)
    w = as_matrix("W_in", tiny_model.weight("W_in", 0)).detach().double()
    curve = getattr(truncation_errors(w, c), method).flatten()
    rows = stats.full.double()
    for r in (1, 5, 17):
        left, right = truncate(w, c, r, method)
        measured = (rows @ (w - left @ right)).norm() / (rows @ w).norm()
        assert float(measured) == pytest.approx(float(curve[r]), rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def result(tiny_model):
    return run_analysis(tiny_model, "low_rank", LowRankConfig(**SMALL))


def test_result_is_consistent_and_whitened_never_needs_more_rank(result, tiny_model):
    n_kinds = 7  # the tiny Llama has a gated MLP
    assert len(result.matrix) == n_kinds * tiny_model.n_layers
    for i in range(len(result.matrix)):
        full = min(result.d_in[i], result.d_out[i])
        for j in range(len(result.budgets)):
            assert 0 <= result.rank_whitened[i][j] <= result.rank_plain[i][j] <= full
        assert result.c_rank[i] <= result.d_in[i]
    assert all(a >= b - 1e-12 for a, b in zip(result.model_fraction["plain"], result.model_fraction["whitened"]))
    assert type(result).from_json(result.to_json()) == result
    json.dumps(result.to_dict())
    assert len(result.figures()) == 4
    assert "whitened truncation keeps" in result.summary()


def test_verification_rows_compare_equal_sizes(result):
    rows = result.verification
    assert [(r["budget"], r["method"]) for r in rows] == [(0.3, "whitened"), (0.3, "plain")]
    white, plain = rows
    assert plain["fraction"] <= white["fraction"] + 1e-12  # plain's size is the closest from below
    assert white["predicted_max"] <= 0.3 + 1e-12
    assert white["replaced"] > 0 and result.base_ppl > 1
    assert all(0 <= r["agreement"] <= 1 and r["ppl_ratio"] > 0 for r in rows)
    header, table = result.verification_table()
    assert len(table) == 2 and len(header) == len(table[0])


def test_the_model_is_restored_bit_for_bit(tiny_model):
    before = {name: p.detach().clone() for name, p in tiny_model.model.named_parameters()}
    run_analysis(tiny_model, "low_rank", LowRankConfig(**SMALL))
    after = dict(tiny_model.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_truncation_changes_the_model_while_applied(tiny_model):
    from workbench.intervene.low_rank_edit import LowRankReplacement, ReplacementHandle

    w = as_matrix("W_out", tiny_model.weight("W_out", 0)).detach().clone()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    tokens = tiny_model.model.to_tokens("hello there")
    with torch.no_grad():
        base = tiny_model.model(tokens)
        with ReplacementHandle(tiny_model, [LowRankReplacement("W_out", 0, u[:, :2] * s[:2], vh[:2])]):
            torch.testing.assert_close(as_matrix("W_out", tiny_model.weight("W_out", 0)), (u[:, :2] * s[:2]) @ vh[:2])
            changed = tiny_model.model(tokens)
        assert not torch.allclose(base, changed)
        assert torch.equal(tiny_model.model(tokens), base)


def test_plain_ranks_of_size_match_from_below():
    spectra = {("W_Q", 0): {"plain": torch.linspace(1, 0, 9), "whitened": torch.linspace(1, 0, 9) ** 2,
                            "shape": (8, 16), "c_rank": 8},
               ("W_out", 0): {"plain": torch.linspace(1, 0, 5), "whitened": torch.linspace(1, 0, 5) ** 3,
                              "shape": (16, 4), "c_rank": 16}}
    white = ranks_at(spectra, "whitened", 0.1)
    target = sum(cost(r, spectra[m]["shape"]) for m, r in white.items())
    plain, eps = plain_ranks_of_size(spectra, target)
    assert sum(cost(r, spectra[m]["shape"]) for m, r in plain.items()) <= target
    assert 0 < eps <= 1


def test_split_is_seeded_disjoint_and_covers_all():
    texts = [f"text {i}" for i in range(40)]
    cal, held = split_prompts(texts, 0.25, seed=0)
    assert sorted(cal + held) == sorted(texts) and not set(cal) & set(held)
    assert len(held) == 10 and split_prompts(texts, 0.25, seed=0) == (cal, held)
    assert split_prompts(texts, 0.25, seed=1) != (cal, held)


@pytest.mark.parametrize(("field", "value"), [("budgets", [0.0]), ("budgets", [1.5]), ("map_budget", 0.5),
                                              ("kinds", ["W_X"]), ("prompts", "bundled:nope"),
                                              ("heldout_fraction", 0.0), ("verify_budgets", [2.0]),
                                              ("curve_layers", [-1]), ("floor", -1.0)])
def test_bad_config_fields_are_named(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        LowRankConfig(**{field: value})


def test_a_missing_prompt_file_is_named(tiny_model, tmp_path):
    with pytest.raises(ConfigError):
        run_analysis(tiny_model, "low_rank", LowRankConfig(prompts=str(tmp_path / "nope.txt")))


def test_result_class_is_registered():
    from workbench import registry

    assert registry.get("low_rank").result is LowRankResult and not registry.get("low_rank").in_default_report
