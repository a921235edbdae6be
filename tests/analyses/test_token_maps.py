"""token_maps: each method's scores against a plain forward and hand autograd, the evaluation's bookkeeping, the
copy/recall prompts, bad inputs, and the bundled model (slow) where the raw map must beat chance."""

from __future__ import annotations

import pytest
import torch

import workbench_analyses.token_maps as tm
from workbench.attribution import gradient_x_input
from workbench.errors import ConfigError
from workbench.runner import run_analysis
from workbench.tam import maps_from_logits
from workbench.tasks.recall import FAMILIES, recall_prompts
from workbench_analyses.token_maps import TokenMapsConfig, TokenMapsResult, score_prompt


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(ids[None])[0].double()


def _manual_grad_x_input(lm, ids, y):
    """Gradient × input written out with autograd: the embedding output kept by a forward hook."""
    box = {}

    def keep(module, args, out):
        out.retain_grad()
        box["e"] = out

    handle = lm.model.embed.register_forward_hook(keep)
    try:
        lm.model(ids[None])[0, -1, y].backward()
    finally:
        handle.remove()
    lm.model.zero_grad(set_to_none=True)
    return (box["e"] * box["e"].grad)[0].sum(-1).detach().double()


def test_scores_equal_a_plain_forward_and_hand_autograd(tiny_recall_model):
    lm = tiny_recall_model
    prompt_ids = lm.model.to_tokens("The password is tiger . The password is")[0]
    y = int(lm.tokenizer(" tiger", add_special_tokens=False)["input_ids"][0])
    ids = torch.cat([prompt_ids, torch.tensor([y])])
    n = len(prompt_ids)
    s = score_prompt(lm, ids, n)
    logits = _logits(lm, ids)
    assert torch.allclose(s["tam_raw"], logits[1:n, y].clamp_min(0), atol=1e-5)
    assert torch.allclose(s["tam_raw_prev"], logits[0:n - 1, y].clamp_min(0), atol=1e-5)  # the predicting position
    assert s["tam_raw_skip_first"][0] == -torch.inf and torch.equal(s["tam_raw_skip_first"][1:], s["tam_raw"][1:])
    _, eci, filtered = maps_from_logits(logits, ids, n)
    assert torch.allclose(s["tam_eci"], eci[0], atol=1e-5) and torch.allclose(s["tam_filtered"], filtered[0], atol=1e-5)
    manual = _manual_grad_x_input(lm, prompt_ids, y)
    assert torch.allclose(s["grad_x_input"], manual[1:], atol=1e-6)
    assert torch.allclose(gradient_x_input(lm, prompt_ids, y), manual, atol=1e-6)
    assert all(p.grad is None for p in lm.model.parameters())  # captum leaves no gradients behind


def test_evaluation_keeps_only_correct_answers_and_counts_hits(tiny_recall_model, monkeypatch):
    lm = tiny_recall_model
    cands = recall_prompts(lm.tokenizer, 9, seed=1)
    target_ids = [lm.tokenizer(c.target, add_special_tokens=False)["input_ids"][0] for c in cands]
    vocab = lm.model.cfg.d_vocab

    def answers(_lm, tokens, last, batch_size):  # the "model" answers prompts 0, 2, 4, 6, 8 correctly
        out = torch.zeros(len(last), vocab)
        for i, t in enumerate(target_ids):
            out[i, t if i % 2 == 0 else (t + 1) % vocab] = 1.0
        return out

    def scores(_lm, ids, n_prompt, first, last, kernel_size, baseline, eci_weights):  # raw hits the answer, ECI
        assert (first, last, len(ids)) == (1, n_prompt, n_prompt + 1)  # always the first token; plain layout
        target = int((ids[:-1] == ids[-1]).nonzero()[0]) - 1
        raw = torch.zeros(n_prompt - 1)
        raw[target] = 1.0
        return {"tam_raw": raw, "tam_eci": torch.eye(len(raw))[0],
                "eci_parts": {"interference": torch.ones(len(raw)), "scale": 0.5}}

    monkeypatch.setattr(tm, "position_logits", answers)
    monkeypatch.setattr(tm, "score_prompt", scores)
    ev = tm._evaluate(lm, TokenMapsConfig(eval_prompts=9, seed=1), progress=False)
    assert ev["n_candidates"] == 9 and ev["n_correct"] == 5
    assert ev["correct_by_family"] == {f: sum(1 for i, c in enumerate(cands) if i % 2 == 0 and c.family == f)
                                       for f in FAMILIES}
    assert ev["hits"] == {"tam_raw": 5, "tam_eci": sum(r["target_index"] == 0 for r in ev["rows"])}
    assert ev["first_token"]["tam_eci"] == 5
    assert all(r["eci"]["target_kept"] == 0.5 and r["step"] == 0 for r in ev["rows"])  # relu(1 − 0.5·1)/1
    assert tm._rate(ev, "tam_raw", "all") == 1.0
    assert tm._chance(ev, "all") == pytest.approx(sum(1 / r["n_inputs"] for r in ev["rows"]) / 5)


def test_metrics_key_each_method_by_its_label():
    """The evaluation table has a row per method and none has a site: the default metrics() takes the method."""
    rows = [{"family": "copy", "target_index": 1, "n_inputs": 4, "argmax": {"tam_raw": 1, "tam_eci": 0}},
            {"family": "recall", "target_index": 2, "n_inputs": 5, "argmax": {"tam_raw": 2, "tam_eci": 2}}]
    ev = {"hits": {"tam_raw": 2, "tam_eci": 1}, "n_correct": 2, "rows": rows, "first_token": {"tam_raw": 0,
                                                                                             "tam_eci": 1}}
    result = TokenMapsResult(model="m", kernel_size=3, examples=[], evaluation=ev, verdict="v")
    metrics = {(metric, layer, site): value for metric, layer, site, value in result.metrics()}
    assert len(metrics) == len(result.metrics())
    assert metrics[("hit rate", None, "TAM after ECI")] == 0.5 and metrics[("hits", None, "TAM raw")] == 2.0
    assert metrics[("hit rate", None, "chance (mean 1/P)")] == pytest.approx((1 / 4 + 1 / 5) / 2)


def test_recall_prompts_are_deterministic_balanced_and_single_target():
    from tests.helpers import recall_words, word_tokenizer

    tok = word_tokenizer(recall_words())
    a, b = recall_prompts(tok, 12, seed=3), recall_prompts(tok, 12, seed=3)
    assert a == b and a != recall_prompts(tok, 12, seed=4)
    assert [p.family for p in a] == list(FAMILIES) * 4
    for p in a:
        target = tok(p.target, add_special_tokens=False)["input_ids"]
        assert len(target) == 1 and tok(p.prompt, add_special_tokens=False)["input_ids"].count(target[0]) == 1
    with pytest.raises(ConfigError, match="'n'"):
        recall_prompts(tok, 0)
    with pytest.raises(ConfigError, match="'tokenizer'"):
        recall_prompts(word_tokenizer(["x"]), 3)


def test_text_maps_step_and_top_inputs(tiny_recall_model):
    r = run_analysis(tiny_recall_model, "token_maps", TokenMapsConfig(
        prompts=["The password is tiger . The password is"], max_new_tokens=3, eval_prompts=0))
    maps = r.maps(0)
    assert maps.step(-1)["token"] == maps.generated_tokens[-1]
    with pytest.raises(ConfigError, match="'t'"):
        maps.step(3)
    with pytest.raises(ConfigError, match="'i'"):
        r.maps(1)
    rows = maps.top_inputs()
    for t, row in enumerate(rows):
        j = int(maps.raw[t].argmax())
        assert row["raw"]["index"] == j and row["raw"]["token"] == maps.prompt_tokens[j]
        assert row["raw"]["share"] == pytest.approx(float(maps.raw[t, j] / maps.raw[t].sum()))
    assert "skipped" in r.summary() and r.table() == ([], [])
    assert TokenMapsResult.from_json(r.to_json()) == r and len(r.figures()) == 2  # strips + explain table


@pytest.mark.parametrize("field, value", [("kernel_size", 2), ("prompts", []), ("prompts", [" "]),
                                          ("eval_prompts", -1), ("max_new_tokens", 0), ("baseline", 1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        TokenMapsConfig(**{field: value})


def test_bad_target_for_the_baseline(tiny_recall_model):
    ids = tiny_recall_model.model.to_tokens("The password is")[0]
    with pytest.raises(ConfigError, match="'target_id'"):
        gradient_x_input(tiny_recall_model, ids, tiny_recall_model.model.cfg.d_vocab)


@pytest.mark.slow
def test_bundled_model_raw_map_finds_the_recalled_token(real_model, all_threads):
    r = run_analysis(real_model, "token_maps")
    ev = r.evaluation
    assert ev["n_correct"] >= 50  # the model really does the copy/recall task on at least 50 prompts
    raw, chance = tm._rate(ev, "tam_raw", "all"), tm._chance(ev, "all")
    assert raw > 3 * chance and raw > 0.3  # measured 45% vs 6% chance
    assert tm._rate(ev, "tam_raw", "secret") > 0.8  # measured 95%: a word asked back is found
    assert tm._rate(ev, "tam_eci", "all") < raw  # the documented negative: ECI removes the peak on text
    d = tm.eci_summary(ev)  # and its measured reason (README): I collinear with A, s* ≈ 1, the target's score gone
    assert d["cosine"] > 0.9 and 0.8 < d["scale"] < 1.2 and d["target_kept"] < 0.3 and d["top_share"] < 0.3
    assert d["late"] > ev["n_correct"] / 2  # the ECI argmax sits on the last three prompt tokens
    assert r.summary().startswith("Path: plain text") and "reference ECI weights" in r.summary()
    assert [e["generated_tokens"][0] for e in r.examples] == [" milk", " dragon", " Mary"]
    assert "NOT" not in r.summary().split("ECI")[0]  # the verdict says the raw map localises above chance


def test_chat_layout_evaluation_explains_the_first_generated_target(tiny_recall_model, monkeypatch):
    """With ``chat_template``: the prompt is a user turn, the explained token is the first generated token equal to
    the target (here the third), and the target's index is counted within the user's text."""
    lm = tiny_recall_model
    monkeypatch.setattr(lm.tokenizer, "chat_template", "{% for m in messages %}<bos> user : {{ m['content'] }} <eos>"
                        "{% endfor %}{% if add_generation_prompt %} bot :{% endif %}", raising=False)
    cands = recall_prompts(lm.tokenizer, 6, seed=2)
    targets = {c.prompt: lm.tokenizer(c.target, add_special_tokens=False)["input_ids"][0] for c in cands}
    seen = []

    def generate(_lm, ids, max_new_tokens):  # prompts 0, 2, 4 answer "the the <target>", the others never say it
        seen.append(ids)
        i = len(seen) - 1
        y = targets[cands[i].prompt]
        return torch.tensor([5, 5, y if i % 2 == 0 else 6])

    monkeypatch.setattr(tm, "greedy_from_ids", generate)
    ev = tm._evaluate(lm, TokenMapsConfig(eval_prompts=6, seed=2, chat_template=True, baseline=False),
                      progress=False)
    assert ev["n_correct"] == 3 and [r["step"] for r in ev["rows"]] == [2, 2, 2]
    for r, c in zip(ev["rows"], cands[::2]):
        text_ids = lm.tokenizer(c.prompt, add_special_tokens=False)["input_ids"]  # the user's text alone
        assert r["n_inputs"] == len(text_ids) and text_ids[r["target_index"]] == targets[c.prompt]
    with pytest.raises(ConfigError, match="'eci_weights'"):
        TokenMapsConfig(eci_weights="mine")
