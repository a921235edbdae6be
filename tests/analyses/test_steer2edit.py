"""steer2edit: the analysis on a tiny word-level model (weights restored exactly, hook-free edits, zero edits when
every attribution is below the threshold), contrast vectors against plain forwards, and the bundled model (slow)."""

from __future__ import annotations

import pytest
import torch

from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError
from workbench.intervene.edit import steer2edit
from workbench.intervene.steer import contrast_vectors, vector_steers
from workbench.runner import run_analysis
from workbench.tasks.sentiment import (
    sentiment_lexicon,
    sentiment_pairs,
    sentiment_prompts,
    sentiment_score,
    sentiment_token_ids,
)
from workbench_analyses.steer2edit import Steer2EditConfig, Steer2EditResult

SMALL = dict(alphas=[1.0, 4.0], rhos=[0.3, 0.05], eval_prompts=6, max_new_tokens=4, utility_texts=4,
             utility_tokens=16)


def _state(lm):
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def test_runs_end_to_end_restores_weights_and_round_trips(tiny_sentiment_model):
    before = _state(tiny_sentiment_model)
    r = run_analysis(tiny_sentiment_model, "steer2edit", Steer2EditConfig(**SMALL))
    after = tiny_sentiment_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every edit reverted bit for bit
    assert count_hooks(tiny_sentiment_model.hook_points()) == 0
    assert [p["method"] for p in r.points] == ["none"] + ["steer"] * 2 + ["edit"] * 6
    assert [p["kind"] for p in r.points[3:]] == ["both", "heads", "neurons"] * 2  # per ρ: heads+neurons, each alone
    assert all(p["kind"] == "raw" for p in r.points[1:3])  # the reference's raw per-layer v
    assert r.points[0]["ppl_ratio"] == 1.0 and r.points[0]["agreement"] == 1.0
    both, heads, neurons = r.points[-3:]
    assert both["heads"] + both["neurons"] > 0  # ρ = 0.05: threshold ρα ≈ 0.05 lets components through
    assert heads["neurons"] == 0 and neurons["heads"] == 0  # ρ = −1 disables the other type
    assert (heads["heads"], neurons["neurons"]) == (both["heads"], both["neurons"])
    assert "edited forwards ran with no hooks attached" in r.summary()
    assert Steer2EditResult.from_json(r.to_json()) == r and r.figures() and r.table()[1]


def test_zero_edit_when_every_attribution_is_below_the_threshold(tiny_sentiment_model):
    r = run_analysis(tiny_sentiment_model, "steer2edit", Steer2EditConfig(**(SMALL | {"rhos": [2.0]})))  # ρα = 1.9
    base = r.points[0]
    for edit in r.points[-3:]:
        assert edit["heads"] == edit["neurons"] == 0
        assert edit["margin"] == base["margin"] and edit["ppl_ratio"] == 1.0 and edit["agreement"] == 1.0
    assert r.components == []


def test_contrast_vectors_equal_plain_forwards(tiny_sentiment_model):
    """The pooled-token option (average="tokens") against plain forwards; the per-text default is checked against
    the reference in tests/workbench/intervene/test_steer2edit_parity.py."""
    lm = tiny_sentiment_model
    pairs = sentiment_pairs()[:5]
    vec = contrast_vectors(lm, [p for p, _ in pairs], [n for _, n in pairs], layers=[1], average="tokens")[1]

    def token_mean(texts, name):
        rows = []
        for t in texts:
            _, cache = lm.model.run_with_cache(lm.model.to_tokens(t), names_filter=[name])
            rows.append(cache[name][0, 1:].reshape(cache[name].shape[1] - 1, -1))  # BOS excluded
        return torch.cat(rows).double().mean(0)

    for attr, name in (("v_attn", "blocks.1.hook_attn_out"), ("v_resid", "blocks.1.hook_resid_post")):
        expected = token_mean([p for p, _ in pairs], name) - token_mean([n for _, n in pairs], name)
        assert torch.allclose(getattr(vec, attr).double(), expected, atol=1e-5)
    z = (token_mean([p for p, _ in pairs], "blocks.1.attn.hook_z") + token_mean([n for _, n in pairs],
                                                                                "blocks.1.attn.hook_z")) / 2
    assert torch.allclose(vec.z_mean.double().flatten(), z, atol=1e-5)


def test_steer2edit_edits_exactly_the_components_above_threshold(tiny_sentiment_model):
    lm = tiny_sentiment_model
    pairs = sentiment_pairs()[:6]
    vectors = contrast_vectors(lm, [p for p, _ in pairs], [n for _, n in pairs], layers=[0, 2])
    from workbench.intervene.edit import elastic_net_lambda, head_attribution, neuron_attribution

    expected = 0
    for l, vec in vectors.items():
        g_h = head_attribution(vec.v_attn, lm.weight("W_O", l).detach(), vec.z_mean)
        g_n = neuron_attribution(vec.v_mlp, lm.weight("W_out", l).detach(), vec.post_mean)
        expected += int((g_h.abs() > 0.2 * 0.95).sum() + (g_n.abs() > 0.1 * 0.95).sum())
        assert torch.equal(elastic_net_lambda(g_h, rho=0.2) != 0, g_h.abs() > 0.2 * 0.95)
    edits = steer2edit(lm, vectors, rho=0.2, rho_mlp=0.1)
    assert len(edits) == expected and {e.layer for e in edits} <= {0, 2}
    assert all(e.lam != 0 for e in edits)


def test_hooks_removed_and_weights_kept_when_steering_fails(tiny_sentiment_model, monkeypatch):
    import workbench_analyses.steer2edit as s2e

    def broken(vectors, alpha, where="components", unit=False):
        return [s for s in vector_steers(vectors, alpha)[:1]] + [
            type(vector_steers(vectors, alpha)[0])("blocks.0.hook_attn_out", torch.zeros(3), positions=None)]

    monkeypatch.setattr(s2e, "vector_steers", broken)
    before = _state(tiny_sentiment_model)
    with pytest.raises(Exception, match="vector"):
        run_analysis(tiny_sentiment_model, "steer2edit", Steer2EditConfig(**SMALL))
    assert count_hooks(tiny_sentiment_model.hook_points()) == 0
    after = tiny_sentiment_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("field, value", [("alpha_en", 1.0), ("alpha_en", -0.1), ("rhos", [0.0]), ("rhos", [-1.0]),
                                          ("token_span", "middle"), ("steer_where", "heads"), ("layers", []),
                                          ("average", "words"), ("edit_kinds", ["attn"]), ("edit_kinds", []),
                                          ("steer_unit", 1), ("alphas", [0.5, 0.5]),
                                          ("rhos", [0.3, 0.3])])
def test_bad_config_fields(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        Steer2EditConfig(**{field: value})


def _point(method, strength, kind, margin, heads=0, neurons=0):
    return {"method": method, "strength": strength, "kind": kind, "label": f"{method} {strength}", "heads": heads,
            "neurons": neurons, "margin": margin, "lexicon": 0.25, "ppl_ratio": 1.5, "agreement": 0.75}


def test_metrics_put_each_setting_in_the_site_and_never_report_the_strength():
    """The table's rows share no site and differ by method, kind and strength: each setting gets its own site."""
    points = [_point("none", 0.0, "none", 0.01), _point("steer", 0.5, "raw", 0.02), _point("steer", 1, "raw", 0.03),
              _point("edit", 0.3, "both", 0.04, heads=2, neurons=5), _point("edit", 0.3, "heads", 0.05, heads=2)]
    result = Steer2EditResult(model="m", layers=[0, 1], check={}, points=points, components=[], components_rho=None,
                              examples=[], verdict="v")
    metrics = {(metric, layer, site): value for metric, layer, site, value in result.metrics()}
    assert len(metrics) == len(result.metrics()) == 5 * 6
    assert [site for _, _, site in list(metrics)[::6]] == ["none", "steer/raw/α=0.5", "steer/raw/α=1",
                                                           "edit/both/ρ=0.3", "edit/heads/ρ=0.3"]
    assert metrics[("margin M", None, "steer/raw/α=1")] == 0.03
    assert metrics[("edited neurons", None, "edit/both/ρ=0.3")] == 5.0
    assert {metric for metric, _, _ in metrics} == {"edited heads", "edited neurons", "margin M", "lexicon",
                                                   "ppl ratio", "top-1 agreement"}  # the strength is a setting


def test_layers_outside_the_model(tiny_sentiment_model):
    with pytest.raises(ConfigError, match="'layers'"):
        run_analysis(tiny_sentiment_model, "steer2edit", Steer2EditConfig(**(SMALL | {"layers": [5]})))


def test_sentiment_data_and_lexicon():
    pos, neg = sentiment_lexicon()
    assert len(pos) >= 60 and len(neg) >= 60 and not pos & neg
    assert len(sentiment_pairs()) == 40 and len(sentiment_prompts()) == 40
    assert sentiment_score("a good day and a bad night") == pytest.approx(0.0)
    assert sentiment_score("Wonderful, lovely food!") == pytest.approx(2 / 3)
    assert sentiment_score("") == 0.0
    assert all(sentiment_score(p) > 0 > sentiment_score(n) for p, n in sentiment_pairs())


def test_sentiment_token_ids_need_known_words(tiny_model):
    with pytest.raises(ConfigError, match="too few lexicon words"):
        sentiment_token_ids(tiny_model.tokenizer)  # a character tokenizer: every word starts with " "


@pytest.mark.slow
def test_bundled_model_carries_sentiment_steering_moves_it_and_edits_revert(real_model, all_threads):
    before = _state(real_model)
    config = Steer2EditConfig(alphas=[0.1], rhos=[0.5], edit_kinds=["both", "neurons"], eval_prompts=20,
                              utility_texts=8)
    r = run_analysis(real_model, "steer2edit", config)
    assert r.check["fraction_ordered"] >= 0.8  # after positive texts the model expects positive words
    base, steer = r.points[0], r.points[1]
    assert steer["kind"] == "raw"
    assert steer["margin"] > base["margin"] + 0.01 and steer["ppl_ratio"] < 1.5  # raw-v steering moves the attribute
    both = [p for p in r.points if p["kind"] == "both"]
    assert all(p["heads"] > 0 and p["neurons"] > 0 for p in both)  # ρ = 0.5 edits heads and neurons
    assert all(p["heads"] == 0 for p in r.points if p["kind"] == "neurons")
    assert "edited forwards ran with no hooks attached" in r.summary()
    after = real_model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # SmolLM2's weights are back, bit for bit
