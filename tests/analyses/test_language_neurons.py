"""language_neurons: the Neural FOXP2 pipeline end to end on a tiny word-level model (against independent
computations), its error paths, and on the bundled models (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import workbench_analyses.language_neurons.stages as stages
import workbench_analyses.language_neurons.steering as steering_stage
from workbench.capture.hooks import count_hooks
from workbench.errors import ConfigError
from workbench.intervene.language import steering_rank, top_mass
from workbench.runner import run_analysis
from workbench.tasks.language import load_en_es_pairs
from workbench_analyses.language_neurons import LanguageNeuronsConfig, LanguageNeuronsResult

SMALL = dict(d_sae=64, k=8, sae_epochs=5, n_candidates=6, lift_prompts=4, n_features=3,
             lambdas=[1.0, 4.0], ratios=[0.0, 1.0], n_random=1, eval_prompts=8, max_new_tokens=6, resamples=5)


@pytest.fixture(autouse=True)
def _own_cache(request, tmp_path, monkeypatch):
    """Tiny-model SAEs go to a fresh cache; slow tests keep the real cache (the converted bundled models)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_result(tiny_lang_model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return run_analysis(tiny_lang_model, "language_neurons", LanguageNeuronsConfig(**SMALL))


def test_runs_end_to_end_round_trips_and_removes_hooks(tiny_lang_model, small_result):
    r = small_result
    assert r.layers == [1, 2]  # the middle half of 4 layers
    assert (r.n_train, r.n_test) == (98, 42)
    assert r.n_en_tokens > 0 and r.n_es_tokens > 0
    for entry in r.stage1:
        kept = [c for c in entry["candidates"] if c["kept"]]
        assert len(kept) <= SMALL["n_features"] and all(c["joint"] > 0 for c in kept)
        assert all(c["joint"] == pytest.approx(max(c["selectivity"], 0) * max(c["lift"] or 0, 0))
                   for c in entry["candidates"])
        # language neurons are SAE feature indices, ranked by joint score (PhotonTJ/NeuralFoxP2 stage1.py)
        assert r.neurons[str(entry["layer"])] == [c["feature"] for c in sorted(kept, key=lambda c: -c["joint"])]
        assert all(0 <= j < SMALL["d_sae"] for j in r.neurons[str(entry["layer"])])
    for e in r.stage2:
        assert e["score"] == pytest.approx(e["top_mass"] * e["stability"])
        assert 0 <= e["stability"] <= 1 + 1e-9 and e["rank"] <= 12
    assert r.window is not None and r.layers[0] <= r.window[0] <= r.window[1] <= r.layers[-1]
    methods = [row["method"] for row in r.steering]
    assert methods == ["none"] + ["sparse"] * 4 + ["dense"] * 2 + ["random"] * 2
    assert r.steering[0]["ppl_ratio"] == 1.0 and r.steering[0]["delta_margin"] == 0.0
    assert all(0 <= row["spanish_fraction"] <= 1 and row["ppl_ratio"] > 0 for row in r.steering)
    assert LanguageNeuronsResult.from_json(r.to_json()) == r
    assert len(r.figures()) == 5 and "VERDICT" in r.summary()  # 4 plots + the example continuations
    assert r.path.startswith("variant (d_sae=64, sae_epochs=5, n_candidates=6, n_features=3")
    assert r.summary().startswith(f"[{r.path} path]")
    assert count_hooks(tiny_lang_model.hook_points()) == 0


def test_path_names_the_reference_or_the_deviations():
    assert LanguageNeuronsConfig().path() == "reference"
    assert LanguageNeuronsConfig(inputs="standardised", architecture="topk").path() == \
        "variant (inputs='standardised', architecture='topk')"


def test_stage2_equals_an_independent_recomputation(tiny_lang_model, small_result):
    """ΔZ spectra from plain forwards (no capture code): the last-token residual at blocks.L.hook_resid_pre (the
    reference's hidden_states[L]), L2-normalised h/(‖h‖+1e-6), encoded by the layer's cached SAE, ΔZ on the language
    neurons, numpy SVD of the zero-padded full-width matrix, the reference's rank rule."""
    from sae_lens import SAE

    train = load_en_es_pairs("train")
    for entry, st1 in zip(small_result.stage2, small_result.stage1):
        layer = entry["layer"]
        neurons = small_result.neurons[str(layer)]
        if not neurons:
            continue
        site = f"blocks.{layer}.hook_resid_pre"
        rows = []
        for text in [en for en, _ in train] + [es for _, es in train]:
            _, cache = tiny_lang_model.model.run_with_cache(tiny_lang_model.model.to_tokens(text), names_filter=[site])
            rows.append(cache[site][0, -1].float())
        x = torch.stack(rows)
        x = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        sae = SAE.load_from_disk(st1["sae_path"], device="cpu")
        with torch.no_grad():
            z = sae.encode(x).double().cpu().numpy()
        delta = np.zeros_like(z[len(train):])
        delta[:, neurons] = (z[len(train):] - z[:len(train)])[:, neurons]
        s = np.linalg.svd(delta, compute_uv=False)
        assert np.allclose(entry["singular_values"], s[:24], rtol=1e-3, atol=1e-5)
        r = steering_rank(torch.tensor(s))
        assert entry["rank"] == r
        assert entry["top_mass"] == pytest.approx(float((s[:r] ** 2).sum() / ((s ** 2).sum() + 1e-10)), rel=1e-3)
        assert entry["top_mass"] == pytest.approx(top_mass(torch.tensor(s), r), rel=1e-3)


def test_hook_adds_the_decoders_linear_part_to_the_raw_residual():
    """PhotonTJ/NeuralFoxP2 neural_foxp2/stage3.py, Stage3InterventionHook on the l2 path: z = SAE.encode(h) of the
    RAW residual row, Δz = λμ_tgt − β·P(⟨z, μ_en⟩μ_en) on the neurons, h += SAE.decode(Δz) without bias — here
    W_dec Δz (sae-lens's b_dec is not added) and no rescaling to the residual's norm."""
    from workbench.intervene.language import prototypes, steering_directions
    from workbench.sae import decoder_directions, encode, train_sae
    from workbench_analyses.language_neurons.stages import LayerState
    from workbench_analyses.language_neurons.steering import _shift

    g = torch.Generator().manual_seed(0)
    sae = train_sae(torch.randn(64, 6, generator=g), d_sae=10, architecture="standard", epochs=3)
    with torch.no_grad():
        sae.sae.b_dec.add_(0.5)  # a decoder bias that must NOT be added
    z_en, z_es = torch.rand(12, 10, generator=g), torch.rand(12, 10, generator=g) + 0.2
    st = LayerState(3, sae, "l2", None, None, z_en, z_es, torch.zeros(6), [1, 4, 7])
    _, v_r, _ = steering_directions((z_es - z_en).double(), st.neurons)
    h = 30 * torch.randn(2, 1, 6, generator=g)  # raw scale, far from unit norm
    got = _shift(st, st.neurons, v_r, 2.0, 1.0)(h)
    mu_tgt, mu_en, proj = prototypes(z_en, z_es, z_en, st.neurons, v_r)
    z = encode(sae, h.reshape(2, 6)).double().cpu().numpy()
    mask = np.zeros(10)
    mask[st.neurons] = 1
    p, t, e = proj.cpu().numpy(), mu_tgt.cpu().numpy(), mu_en.cpu().numpy()
    want = np.stack([(2.0 * t - 1.0 * (p @ (np.dot(row, e) * e))) * mask for row in z])
    want = want @ decoder_directions(sae).double().cpu().numpy()
    assert np.allclose(got.reshape(2, 6).double().cpu().numpy(), want, atol=1e-5)


def test_zero_strength_steering_is_identical_to_no_steering(tiny_lang_model):
    before = tiny_lang_model.model(tiny_lang_model.model.to_tokens("The weather is nice today ."))
    config = LanguageNeuronsConfig(**(SMALL | {"lambdas": [0.0], "ratios": [0.0], "n_random": 1}))
    r = run_analysis(tiny_lang_model, "language_neurons", config)
    base, sparse, dense, rand = r.steering
    for row in (sparse, dense, rand):
        assert row["spanish_fraction"] == base["spanish_fraction"] and row["margin"] == base["margin"]
        assert row["ppl_ratio"] == 1.0 and row["distinct"] == base["distinct"]
    after = tiny_lang_model.model(tiny_lang_model.model.to_tokens("The weather is nice today ."))
    assert torch.equal(before, after)


def test_sae_cache_hit_on_rerun(tiny_lang_model, monkeypatch):
    config = LanguageNeuronsConfig(**(SMALL | {"layers": [1, 2], "window": [1, 2]}))
    first = run_analysis(tiny_lang_model, "language_neurons", config)
    import workbench.sae.training as sae

    def no_training(*args, **kwargs):
        raise AssertionError("the SAE was retrained although it is cached")

    monkeypatch.setattr(sae, "_train", no_training)
    second = run_analysis(tiny_lang_model, "language_neurons", config)
    assert [s["sae_path"] for s in second.stage1] == [s["sae_path"] for s in first.stage1]
    assert second.stage1 == first.stage1 and second.neurons == first.neurons


def test_no_language_neurons_is_a_clear_null_not_a_crash(tiny_lang_model, monkeypatch):
    monkeypatch.setattr(stages, "causal_lift", lambda dm, alphas: -torch.ones(dm.shape[0], dtype=torch.float64))
    r = run_analysis(tiny_lang_model, "language_neurons", LanguageNeuronsConfig(**SMALL))
    assert r.neurons == {"1": [], "2": []} and r.stage2 == [] and r.window is None and r.steering == []
    assert r.verdict.startswith("No language neurons found in layers 1–2") and r.summary().startswith("[variant (")
    assert len(r.figures()) == 1 and r.table()[1]
    assert LanguageNeuronsResult.from_json(r.to_json()) == r


def test_hooks_removed_when_steering_raises(tiny_lang_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in the shift")

    monkeypatch.setattr(steering_stage, "reference_shift", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_analysis(tiny_lang_model, "language_neurons", LanguageNeuronsConfig(**SMALL))
    assert count_hooks(tiny_lang_model.hook_points()) == 0


@pytest.mark.parametrize("overrides, param", [
    ({"layers": [2, 3, 4]}, "layers"),  # the tiny model has layers 0..3
    ({"layers": [1, 2], "window": [0, 1]}, "window"),
    ({"window": [2, 7]}, "window"),
])
def test_layers_or_window_outside_the_model(tiny_lang_model, overrides, param):
    with pytest.raises(ConfigError, match=repr(param)):
        run_analysis(tiny_lang_model, "language_neurons", LanguageNeuronsConfig(**(SMALL | overrides)))


def test_unpaired_data_is_refused_with_its_line(tiny_lang_model, tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [{"en": "The cat is here .", "es": "El gato está aquí ."}] * 5 + [{"en": "Only English here ."}]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(ConfigError, match="line 6"):
        run_analysis(tiny_lang_model, "language_neurons", LanguageNeuronsConfig(**(SMALL | {"pairs": str(path)})))
    with pytest.raises(ConfigError, match="'pairs'"):
        run_analysis(tiny_lang_model, "language_neurons",
                     LanguageNeuronsConfig(**(SMALL | {"pairs": str(tmp_path / "missing.jsonl")})))


@pytest.mark.parametrize("field, value", [
    ("layers", [3, 1]), ("layers", []), ("layers", [1, 3]), ("window", [3, 1]), ("alphas", [0.0, 1.0]),
    ("ratios", [-1.0]), ("sae_rows", "middle"), ("window_max", 1), ("architecture", "jumprelu"),
    ("inputs", "raw"), ("read_site", "hook_out"), ("token_sets", "ascii"), ("n_features", 0),
    ("l1_coefficient", -1.0), ("sae_batch", 0), ("lambdas", [1.0, 1.0]), ("ratios", [0.5, 0.5]),
])
def test_bad_config_fields(field, value):
    with pytest.raises(ConfigError, match=repr(field)):
        LanguageNeuronsConfig(**{field: value})


def _row(method, lam, ratio, seed, fraction, ppl_ratio=1.25):
    return {"method": method, "lam": lam, "ratio": ratio, "seed": seed, "spanish_fraction": fraction,
            "english_fraction": 0.5, "spanish_score": 0.5, "margin": -0.5, "delta_margin": 0.25,
            "ppl_ratio": ppl_ratio, "es_context_nll": 6.5, "distinct": 0.75}


def test_metrics_put_method_and_settings_in_the_site():
    """The table's rows differ by method, λ, β/λ and seed (settings): each configuration gets its own site, and a
    measure not taken (None) is left out rather than stored."""
    steering = [_row("none", 0.0, 0.0, None, 0.125), _row("sparse", 1.0, 0.5, None, 0.5),
                _row("sparse", 1.0, 1.0, None, 0.625), _row("dense", 2.0, 0.0, None, 0.75, ppl_ratio=None),
                _row("random", 1.0, 0.5, 0, 0.0), _row("random", 1.0, 0.5, 1, 0.25)]
    result = LanguageNeuronsResult(model="m", path="reference", layers=[1, 2], n_train=1, n_test=1, n_en_tokens=1,
                                   n_es_tokens=1, stage1=[], neurons={}, stage2=[], window=None, steering=steering,
                                   examples=[], verdict="v")
    metrics = {(metric, layer, site): value for metric, layer, site, value in result.metrics()}
    assert len(metrics) == len(result.metrics()) == 6 * 7 - 1
    assert sorted({site for _, _, site in metrics}) == ["dense/λ=2", "none", "random/λ=1/ratio=0.5/seed=0",
                                                        "random/λ=1/ratio=0.5/seed=1", "sparse/λ=1/ratio=0.5",
                                                        "sparse/λ=1/ratio=1"]
    assert metrics[("Spanish fraction", None, "sparse/λ=1/ratio=1")] == 0.625
    assert metrics[("Spanish fraction", None, "random/λ=1/ratio=0.5/seed=1")] == 0.25
    assert ("English ppl ratio", None, "dense/λ=2") not in metrics
    assert not {"λ", "β/λ", "seed"} & {metric for metric, _, _ in metrics}


# ---------------------------------------------------------------------------------------------------------------------
# the bundled models


# The default run's window layers (L8–L13), 16 held-out prompts, one steering setting: the same SAEs (cached by the
# full run) and the same stage-I outcome as the README's numbers.
GEMMA_WINDOW = dict(layers=[8, 9, 10, 11, 12, 13], window=[8, 13], lambdas=[1.0], ratios=[1.0], n_random=1,
                    eval_prompts=16)


@pytest.mark.slow
def test_gemma_reference_path_finds_no_language_neurons(all_threads):
    """The reference path (PhotonTJ/NeuralFoxP2: L2-normalised last-token residuals, ReLU SAE with L1 5e-3, 150
    epochs) on 98 pairs: the L1 term outweighs the per-element MSE of unit-norm inputs, so the SAE's features never
    fire, no feature has a positive Spanish selectivity, and stages II and III do not run — an honest null."""
    import workbench

    lm = workbench.load_model("gemma3-270m")
    r = run_analysis(lm, "language_neurons", LanguageNeuronsConfig(**GEMMA_WINDOW))
    assert r.path == "reference" and r.summary().startswith("[reference path] No language neurons")
    assert all(s["sae_l0"] < 1 and s["n_positive_selectivity"] == 0 for s in r.stage1)
    assert r.neurons == {str(l): [] for l in GEMMA_WINDOW["layers"]} and r.steering == []
    assert r.n_es_tokens > 1000 and r.n_en_tokens > 1000  # the Unicode-range token sets of Gemma's vocabulary


@pytest.mark.slow
def test_smollm2_runs_the_same_pipeline(real_model):
    config = LanguageNeuronsConfig(layers=[12, 13, 14], d_sae=256, sae_epochs=10, n_candidates=6, lift_prompts=4,
                                   lambdas=[1.0], ratios=[1.0], n_random=1, eval_prompts=8, max_new_tokens=8)
    r = run_analysis(real_model, "language_neurons", config)
    assert r.path == "variant (d_sae=256, sae_epochs=10, n_candidates=6)" and r.summary().startswith("[variant")
    # the reference's raw-string Unicode sets on a byte-level BPE: every "Ġ"-prefixed (space-prefixed) token has
    # U+0120, inside U+0100–024F, so it counts as Spanish — most of the vocabulary
    assert r.n_es_tokens > r.n_en_tokens > 0 and len(r.stage1) == 3
    assert r.steering == [] or r.steering[0]["method"] == "none"
    assert LanguageNeuronsResult.from_json(r.to_json()) == r and r.summary()


def test_margins_read_off_the_generation_prefill_equal_a_separate_steered_forward(tiny_lang_model):
    """Stage III reads M at each prompt's last token from the generation's prefill (left-padded, steered at the last
    position) instead of a second forward: the same numbers as margins() on the right-padded prompts, steered at
    each one's last real token, and the same continuations as greedy_continuations under the same steering."""
    from workbench.intervene.readout import greedy_continuations, right_padded
    from workbench.intervene.steer import Steer, steering
    from workbench.tasks.language import language_token_ids

    lm = tiny_lang_model
    prompts = [en for en, _ in load_en_es_pairs("test")][:5]
    en_ids, es_ids = language_token_ids(lm.tokenizer, load_en_es_pairs("train"))
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    config = LanguageNeuronsConfig(**(SMALL | {"batch_size": 3}))
    seen = []
    for steers in (lambda positions: [], lambda positions: [Steer("blocks.1.hook_resid_post", v, 3.0, positions)]):
        rows = [lm.model.to_tokens(p)[0] for p in prompts]
        gens, got = steering_stage.generate_with_margins(lm, rows, en_ids, es_ids, steers, config)
        tokens, last = right_padded(lm, prompts)
        want = steering_stage.margins(lm, tokens, last, en_ids, es_ids, steers(last))
        assert torch.allclose(got, want, atol=1e-6)
        seen.append(got)
        with steering(lm, steers("last")):
            assert [g.tolist() for g in gens] == [c.tolist() for c in greedy_continuations(
                lm, prompts, max_new_tokens=config.max_new_tokens)]
    assert not torch.allclose(seen[0], seen[1], atol=1e-6)  # the steer moved the margins
    assert count_hooks(lm.hook_points()) == 0
