"""gradient_spectra: against plain Hugging Face autograd on the same tiny model, memory hygiene, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

import analyses.gradient_spectra as gs
from analyses.gradient_spectra import GradientSpectraConfig, GradientSpectraResult, dataset_gradients
from workbench.errors import ConfigError, ShapeError
from workbench.prompts import bundled_pairs, read_pairs
from workbench.runner import run_analysis

PAIRS = [("What is 2+3?", "It is 5, because two plus three makes five."),
         ("Name a colour.", "Blue is a colour of the sky."),
         ("Say hi", "Hello! How are you today?")]
HF_NAMES = {"W_Q": "q_proj", "W_K": "k_proj", "W_V": "v_proj", "W_O": "o_proj"}


def _hf_reference(folder, tokenizer, prompt, response):
    """The reference recipe with plain transformers: labels -100 on the prompt, loss.backward(), svdvals of .grad."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    p = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + r])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    metrics = {}
    for layer, block in enumerate(model.model.layers):
        for kind, name in HF_NAMES.items():
            g = getattr(block.self_attn, name).weight.grad.double()
            s = torch.linalg.svdvals(g)
            p_ = s / s.sum()
            metrics[kind, layer] = (float(s.sum()), float(torch.exp(-(p_ * p_.log()).sum())), float(g.norm()),
                                    g.reshape(-1))
    return float(out.loss.detach()), metrics


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    from conftest import tiny_llama

    folder = tmp_path_factory.mktemp("tiny-grad")
    return folder, tiny_llama(folder, max_position_embeddings=1024)


def test_nuclear_norm_and_erank_equal_plain_autograd(folder_and_model):
    folder, lm = folder_and_model
    out = dataset_gradients(lm, PAIRS[:2], chat_template=False, n_top=4)
    refs = [_hf_reference(folder, lm.tokenizer, p, r) for p, r in PAIRS[:2]]
    assert out.loss[0] == pytest.approx((refs[0][0] + refs[1][0]) / 2, rel=1e-5)
    for p, kind in enumerate(out.projections):
        for layer in range(lm.n_layers):
            a, b = refs[0][1][kind, layer], refs[1][1][kind, layer]
            for m, (name) in enumerate(("nuclear", "erank", "frobenius")):
                assert float(out.mean[name][p, layer]) == pytest.approx((a[m] + b[m]) / 2, rel=1e-4), (kind, layer)
                assert float(out.std[name][p, layer]) == pytest.approx(abs(a[m] - b[m]) / math.sqrt(2), rel=1e-3,
                                                                       abs=1e-9)
    # cosine between layer 0 and layer 1 gradients, per projection, averaged over the two samples
    for p, kind in enumerate(out.projections):
        cos = [float(torch.nn.functional.cosine_similarity(ref[1][kind, 0][3], ref[1][kind, 1][3], dim=0))
               for ref in refs]
        assert float(out.cosine[p, 0, 1]) == pytest.approx(sum(cos) / 2, rel=1e-4, abs=1e-6)
        assert float(out.cosine[p, 0, 0]) == pytest.approx(1.0, abs=1e-9)


def test_no_gradient_outlives_a_sample_and_requires_grad_is_restored(folder_and_model):
    _, lm = folder_and_model
    before = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    dataset_gradients(lm, PAIRS, chat_template=False)
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == before
    assert all(p.grad is None for p in lm.model.parameters())


def test_requires_grad_is_restored_when_the_forward_raises(folder_and_model, monkeypatch):
    _, lm = folder_and_model
    before = {n: p.requires_grad for n, p in lm.model.named_parameters()}

    def boom(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(gs, "response_loss", boom)
    with pytest.raises(RuntimeError, match="forward failed"):
        dataset_gradients(lm, PAIRS, chat_template=False)
    assert {n: p.requires_grad for n, p in lm.model.named_parameters()} == before


def test_mlp_projections_optional(folder_and_model):
    _, lm = folder_and_model
    out = dataset_gradients(lm, PAIRS[:1], projections=["W_out", "W_in"], chat_template=False)
    assert out.mean["nuclear"].shape == (2, lm.n_layers) and bool((out.mean["nuclear"] > 0).all())


def test_bad_inputs(folder_and_model, tmp_path):
    _, lm = folder_and_model
    with pytest.raises(ConfigError, match="at least one"):
        dataset_gradients(lm, [], chat_template=False)
    with pytest.raises(ShapeError, match=r"'dataset\[1\]'.*max_length=12"):
        dataset_gradients(lm, [("hi", "ok"), ("a much longer prompt here", "x")], max_length=12, chat_template=False)
    for field, value in [("projections", ["W_X"]), ("datasets", {}), ("datasets", {"a": "bundled:nope"}),
                         ("datasets", {"a": "data.csv"}), ("max_samples", 0), ("n_top", 0)]:
        with pytest.raises(ConfigError, match=repr(field)):
            GradientSpectraConfig(**{field: value})
    clash = GradientSpectraConfig(datasets={"r": "bundled:reasoning", "r (shuffled responses)": "bundled:reasoning"})
    with pytest.raises(ConfigError, match="'datasets'"):
        run_analysis(lm, "gradient_spectra", clash)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        read_pairs(bad)
    bad.write_text(json.dumps({"prompt": "p", "response": "  "}) + "\n")
    with pytest.raises(ConfigError, match="empty response"):
        read_pairs(bad)
    bad.write_text("\n")
    with pytest.raises(ConfigError, match="no \\(prompt, response\\) pairs"):
        read_pairs(bad)


def test_bundled_sets_and_shuffled_control():
    for name in ("instruction", "reasoning"):
        pairs = bundled_pairs(name)
        assert len(pairs) >= 30 and len({p for p, _ in pairs}) == len(pairs)
    pairs = bundled_pairs("instruction")
    shuffled = gs._shuffled(pairs, seed=0)
    assert sorted(r for _, r in shuffled) == sorted(r for _, r in pairs)
    assert sorted(p for p, _ in shuffled) == sorted(p for p, _ in pairs)
    assert not set(shuffled) & set(pairs)  # no prompt keeps its own response


def test_analysis_side_by_side_with_control(folder_and_model, tmp_path):
    _, lm = folder_and_model
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    config = GradientSpectraConfig(datasets={"mine": str(path), "reasoning": "bundled:reasoning"}, max_samples=3)
    result = run_analysis(lm, "gradient_spectra", config)
    assert result.datasets == ["mine", "reasoning", "mine (shuffled responses)"]
    assert result.control == "mine (shuffled responses)" and result.n_samples == [3, 3, 3]
    assert len(result.layer) == 3 * 4 * lm.n_layers
    assert GradientSpectraResult.from_json(result.to_json()) == result
    assert "control: shuffling mine's responses" in result.summary()


@pytest.mark.slow
def test_bundled_model_mismatched_responses_give_larger_gradients(real_model):
    """Meaning check on the real model: responses shuffled across prompts raise the loss and the nuclear norm."""
    config = GradientSpectraConfig(datasets={"instruction": "bundled:instruction"}, max_samples=8)
    result = run_analysis(real_model, "gradient_spectra", config)
    base, control = result.datasets
    assert result.loss_mean[1] > result.loss_mean[0] + 0.3
    for proj in result.projections():
        assert result.layer_mean(control, proj, "nuclear_mean") > result.layer_mean(base, proj, "nuclear_mean")
