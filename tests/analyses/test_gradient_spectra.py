"""gradient_spectra: against a transcription of MingLiiii/Gradient_Unified on plain Hugging Face autograd, the factor
route against the dense one, the reference's prompt layout and skip rule, memory hygiene, errors."""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict

import pytest
import torch

import workbench_analyses.gradient_spectra as gs
from workbench.capture.gradients import dataset_gradients
from workbench.capture.gradients import factor_sites as library_factor_sites
from workbench.errors import ConfigError, ShapeError
from workbench.models.chat import sft_ids, sft_text
from workbench.prompts import bundled_pairs, read_pairs
from workbench.runner import run_analysis
from workbench_analyses.gradient_spectra import GradientSpectraConfig, GradientSpectraResult

PAIRS = [("What is 2+3?", "It is 5, because two plus three makes five."),
         ("Name a colour.", "Blue is a colour of the sky."),
         ("Say hi", "Hello! How are you today?")]
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def _reference_text(tokenizer, instruction, output, instruct):
    """get_grad_vector_initial_try.py ``main``: the text of one sample (no ``input`` field in our pairs)."""
    if instruct:
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": instruction}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + output
    return instruction + "\n" + output


def _reference_sample(folder, tokenizer, text, target_text, max_length=2048):
    """get_grad_vector_initial_try.py ``cal_svd_vector_part_text``, transcribed: encode the whole text (truncation at
    max_length), start_token = len(encode(text[:text.rfind(target)])), labels[:start_token] = -100, HF loss,
    loss.backward(), then per q/k/v/o_proj weight: torch.linalg.svd(grad) -> S_list (float32, as there), the
    Frobenius norm, and the flattened gradient for the cosines."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length)
    start_token = len(tokenizer.encode(text[:text.rfind(target_text)]))
    for param in model.parameters():
        param.requires_grad = False
    for name, param in model.named_parameters():
        if len(param.shape) > 1 and (param.shape[0] == param.shape[1] or "self_attn" in name):
            param.requires_grad = True
    labels = input_ids.clone()
    labels[0, :start_token] = -100
    loss = model(input_ids, labels=labels).loss
    loss.backward()
    out = {"loss": loss.item()}
    for name, param in model.named_parameters():
        if param.grad is not None and "self_attn" in name:
            S = torch.linalg.svd(param.grad)[1]
            out[name] = {"S_list": S.tolist(), "frobenius_norm": torch.linalg.norm(param.grad).item(),
                         "flat": param.grad.view(-1).clone()}
    return out


def _reference_averages(samples):
    """vis/try_vis_nuclear_two.py (nuclear = sum(S_list), every sample averaged), try_vis_effective_rank_entropy_two.py
    (S_list with sum < 1e-12 skipped; p = s/sum; exp(-sum p log p) over p > 0) and try_vis_cosine_two.py (adjacent
    layers' cosine, compute_cosine_similarity_chunked: dot/(norm_i norm_j + 1e-9)), per (proj, layer)."""
    pattern = re.compile(r"model\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight")
    nuc, er, frob, cos = (defaultdict(list) for _ in range(4))
    for data in samples:
        flats = {}
        for key, val in data.items():
            match = pattern.match(key)
            if not match:
                continue
            layer, proj = int(match.group(1)), match.group(2)
            s_list = val["S_list"]
            nuc[proj, layer].append(sum(s_list))
            frob[proj, layer].append(val["frobenius_norm"])
            flats[proj, layer] = val["flat"]
            total = sum(s_list)
            if total < 1e-12:
                continue
            entropy = -sum(x / total * math.log(x / total) for x in s_list if x / total > 0)
            er[proj, layer].append(math.exp(entropy))
        for (proj, layer), g in flats.items():
            if (proj, layer + 1) in flats:
                h = flats[proj, layer + 1]
                cos[proj, layer].append(float(torch.dot(g, h) / (g.norm() * h.norm() + 1e-9)))
    mean = lambda v: sum(v) / len(v) if v else 0.0  # noqa: E731
    return ({k: mean(v) for k, v in nuc.items()}, {k: mean(v) for k, v in er.items()},
            {k: mean(v) for k, v in frob.items()}, {k: mean(v) for k, v in cos.items()})


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    from tests.helpers import tiny_llama

    folder = tmp_path_factory.mktemp("tiny-grad")
    return folder, tiny_llama(folder, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def templated(tmp_path_factory):
    """The tiny Llama with a chat template on its (character-level) tokenizer: an "instruct" model."""
    from tests.helpers import char_tokenizer, tiny_llama

    tok = char_tokenizer()
    tok.chat_template = TEMPLATE
    folder = tmp_path_factory.mktemp("tiny-grad-instruct")
    return folder, tiny_llama(folder, tokenizer=tok)


@pytest.mark.parametrize("route", ["factor", "dense"])
@pytest.mark.parametrize("instruct", [False, True])
def test_parity_with_gradient_unified_transcription(folder_and_model, templated, route, instruct):
    """Reference: MingLiiii/Gradient_Unified get_grad_vector_initial_try.py (``main``' prompt layout,
    ``cal_svd_vector_part_text``) and vis/try_vis_{nuclear,effective_rank_entropy,cosine}_two.py (the averages),
    transcribed above on plain transformers. Tolerance 1e-4 relative: the reference's SVD and gradients are
    float32, ours float64 after the float32 backward."""
    folder, lm = templated if instruct else folder_and_model
    out = dataset_gradients(lm, PAIRS, chat_template=instruct, route=route, n_top=4)
    samples = [_reference_sample(folder, lm.tokenizer, _reference_text(lm.tokenizer, p, r, instruct), r)
               for p, r in PAIRS]
    nuc, er, frob, cos = _reference_averages(samples)
    assert out.loss[0] == pytest.approx(sum(s["loss"] for s in samples) / len(samples), rel=1e-5)
    for p, kind in enumerate(out.projections):
        proj = {"W_Q": "q", "W_K": "k", "W_V": "v", "W_O": "o"}[kind]
        for layer in range(lm.n_layers):
            assert float(out.mean["nuclear"][p, layer]) == pytest.approx(nuc[proj, layer], rel=1e-4), (kind, layer)
            assert float(out.mean["erank"][p, layer]) == pytest.approx(er[proj, layer], rel=1e-4), (kind, layer)
            assert float(out.mean["frobenius"][p, layer]) == pytest.approx(frob[proj, layer], rel=1e-4)
        assert float(out.cosine[p, 0, 1]) == pytest.approx(cos[proj, 0], rel=1e-4, abs=1e-6)


def test_reference_layout_and_token_boundary(templated, folder_and_model):
    """sft_ids builds the reference's text and tokenises it as the reference (joint encode, rfind boundary)."""
    for (_, lm), instruct in ((templated, True), (folder_and_model, False)):
        for prompt, response in PAIRS:
            text = _reference_text(lm.tokenizer, prompt, response, instruct)
            ids, n_prompt = sft_ids(lm, prompt, response, max_length=2048, chat_template=instruct)
            assert ids[0].tolist() == lm.tokenizer.encode(text, truncation=True, max_length=2048)
            assert n_prompt == len(lm.tokenizer.encode(text[:text.rfind(response)]))
    _, lm = templated
    ids, _ = sft_ids(lm, "hi", "ok", max_length=2048)
    assert lm.tokenizer.decode(ids[0]).startswith("<system>You are a helpful assistant.</s><user>hi</s><assistant>")
    ids, _ = sft_ids(lm, "hi", "ok", max_length=2048, system_prompt=None)
    assert lm.tokenizer.decode(ids[0]) == "<user>hi</s><assistant>ok"
    _, base = folder_and_model
    assert sft_text(base, "hi", "ok") == "hi\nok"  # (this tokenizer maps "\n" to <unk>)


@pytest.mark.parametrize("projections", [list(gs.ATTENTION), ["W_in", "W_gate", "W_out"]])
def test_factor_route_equals_dense_route(folder_and_model, projections):
    """The T × T core gives the d × d SVD's numbers (to 1e-6 relative on the means; GQA's k/v shapes included)."""
    _, lm = folder_and_model
    f = dataset_gradients(lm, PAIRS, projections=projections, route="factor", chat_template=False)
    d = dataset_gradients(lm, PAIRS, projections=projections, route="dense", chat_template=False)
    for m in gs.METRICS:
        assert torch.allclose(f.mean[m], d.mean[m], rtol=1e-6, atol=0), m
        assert torch.allclose(f.std[m], d.std[m], rtol=1e-4, atol=1e-12), m
    assert torch.allclose(f.top, d.top, rtol=1e-5, atol=1e-12)
    assert torch.equal(f.cosine, d.cosine) and f.route == "factor" and d.route == "dense"


def test_zero_gradients_are_left_out_of_the_effective_rank_mean(tmp_path):
    """With W_V of layer 0 zeroed, layer 0's attention output is 0 whatever the pattern: the gradients of its W_Q, W_K
    and W_O are exactly 0. The reference skips them in the effective-rank average (not 0s averaged in) and keeps
    their nuclear norm 0 in the nuclear average."""
    from tests.helpers import tiny_llama

    lm = tiny_llama(tmp_path)
    with torch.no_grad():
        lm.parameters(["W_V"])[0].param.zero_()
    out = dataset_gradients(lm, PAIRS, chat_template=False)
    zero = [out.projections.index(k) for k in ("W_Q", "W_K", "W_O")]
    assert out.erank_n[zero, 0].tolist() == [0, 0, 0] and int(out.erank_n[:, 1].min()) == len(PAIRS)
    assert float(out.mean["nuclear"][zero, 0].abs().max()) == 0.0 and float(out.mean["erank"][zero, 0].max()) == 0.0
    assert bool((out.mean["erank"][:, 1] > 1).all())
    config = GradientSpectraConfig(datasets={"mine": "bundled:instruction"}, max_samples=2, shuffled_control=False,
                                   chat_template=False)
    result = run_analysis(lm, "gradient_spectra", config)
    assert result.erank_skipped == [3 * 2] and "left out of the effective-rank means" in result.summary()
    assert [n for n, layer in zip(result.erank_n, result.layer, strict=True) if layer == 0] == [0, 0, 2, 0]


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

    from workbench.capture import gradients as library

    monkeypatch.setattr(library, "response_loss", boom)
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
    with pytest.raises(ConfigError, match="'route'"):
        dataset_gradients(lm, PAIRS, route="svd")
    no_hooks = type("NoHooks", (), {"hook_points": lambda self: {}, "facts": lm.facts})()
    with pytest.raises(ConfigError, match="'route'.*'dense'"):
        library_factor_sites(no_hooks, ["W_Q"])
    with pytest.raises(ShapeError, match=r"'dataset\[1\]'.*max_length=12"):
        dataset_gradients(lm, [("hi", "ok"), ("a much longer prompt here", "x")], max_length=12, chat_template=False)
    for field, value in [("projections", ["W_X"]), ("datasets", {}), ("datasets", {"a": "bundled:nope"}),
                         ("datasets", {"a": "data.csv"}), ("max_samples", 0), ("n_top", 0), ("route", "svd"),
                         ("system_prompt", 3), ("max_length", 1)]:
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


def test_metrics_per_layer_under_projection_and_dataset():
    """Not the table's layer means: one key per (projection, dataset, layer), and per dataset its sample counts."""
    rows = [(d, p, layer) for d in ("a", "b") for p in ("W_Q", "W_K") for layer in (0, 1)]
    value = [float(i) for i in range(len(rows))]
    result = GradientSpectraResult(
        model="m", datasets=["a", "b"], n_samples=[2, 3], loss_mean=[1.5, 2.5], loss_std=[0.5, 0.25],
        prompt_tokens=[4.0, 5.0], response_tokens=[6.0, 7.0], seconds=[0.1, 0.1], dataset=[r[0] for r in rows],
        projection=[r[1] for r in rows], layer=[r[2] for r in rows], nuclear_mean=value, nuclear_std=value,
        erank_mean=[v + 100 for v in value], erank_std=value, frobenius_mean=value, frobenius_std=value,
        top_singular=[[v + 0.5, v] for v in value], cosine={}, max_length=64, chat_template=False)
    metrics = {(metric, layer, site): v for metric, layer, site, v in result.metrics()}
    assert len(metrics) == len(result.metrics()) == len(rows) * 7 + 2 * 5
    assert metrics[("effective rank", 1, "W_K/b")] == 100 + rows.index(("b", "W_K", 1))
    assert metrics[("σ_max", 0, "W_Q/a")] == 0.5
    assert metrics[("response tokens", None, "b")] == 7.0 and metrics[("samples", None, "a")] == 2.0


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
