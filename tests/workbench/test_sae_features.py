"""workbench.sae feature browser: planted features come out with exactly their contexts, the streamed statistics equal
a dense recomputation, logit effects equal TransformerLens's folded ``W_dec @ W_U``, and bad SAEs/sites are refused.

The planted SAE reads ``blocks.0.hook_resid_pre`` of the tiny Llama: with rotary positions that is the token
embedding itself, so a feature whose encoder row is the embedding of one token (bias halfway between that token's
score and the best other token's) fires on that token and nowhere else.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch

from workbench.capture import capture
from workbench.errors import ConfigError, SiteError
from workbench.intervene.direct_logits import direction_logits, folded_norm
from workbench.sae import FeatureStats, feature_stats, load_sae, sae_hook_name, train_site_sae
from workbench.sae.features import HIST_HIGH, HIST_LOW, HIST_PER_DECADE, _Running

SITE = "blocks.0.hook_resid_pre"
TEXTS = ["the quick brown fox", "a quiet day", "no such letter here", "zebra and quail", "q", "lazy dozen"]
PLANTED = {0: "q", 1: "z"}  # feature -> the one character (token) it fires on
N_SAE = 6  # 0, 1 planted; 2 dead; 3 fires everywhere; 4, 5 random


def _token_id(lm, ch: str) -> int:
    ids = lm.tokenizer.convert_tokens_to_ids([ch])
    return int(ids[0])


def planted_sae(lm):
    """A sae-lens StandardSAE (ReLU) whose features 0/1 fire only on 'q'/'z', 2 never, 3 on every token."""
    from sae_lens import StandardSAE, StandardSAEConfig

    emb = lm.weight("W_E").detach().float().cpu()  # [vocab, d]
    d = emb.shape[1]
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=N_SAE, device="cpu"))
    g = torch.Generator().manual_seed(1)
    w_enc = torch.randn(d, N_SAE, generator=g) * 0.1
    b_enc = torch.zeros(N_SAE)
    for f, ch in PLANTED.items():
        t = _token_id(lm, ch)
        scores = emb @ emb[t]
        others = torch.cat([scores[:t], scores[t + 1:]])
        assert scores[t] > others.max(), "the planted token must score above every other token"
        w_enc[:, f] = emb[t] / (scores[t] - others.max())  # the score gap becomes 1
        b_enc[f] = -(scores[t] + others.max()) / 2 / (scores[t] - others.max())  # fires at +0.5 on the token only
    w_enc[:, 2], b_enc[2] = 0.0, -1.0
    w_enc[:, 3], b_enc[3] = 0.0, 0.25
    w_dec = torch.nn.functional.normalize(torch.randn(N_SAE, d, generator=g), dim=1)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = SITE
    return sae.to(lm.device).eval()


@pytest.fixture(scope="module")
def planted(tiny_model):
    return planted_sae(tiny_model)


@pytest.fixture(scope="module")
def stats(tiny_model, planted):
    return feature_stats(tiny_model, planted, TEXTS, site=SITE, k=10, window=3, n_logits=5, batch_size=2)


def _occurrences(lm, ch: str) -> set[tuple[int, int]]:
    out = set()
    for i, text in enumerate(TEXTS):
        ids = lm.model.to_tokens(text)[0].tolist()
        out |= {(i, p) for p, t in enumerate(ids) if t == _token_id(lm, ch)}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# planted features


@pytest.mark.parametrize("feature", sorted(PLANTED))
def test_a_planted_feature_comes_out_with_exactly_its_contexts(tiny_model, stats, feature):
    ch = PLANTED[feature]
    expected = _occurrences(tiny_model, ch)
    assert len(expected) >= 2
    got = {(c["text"], c["position"]) for c in stats.contexts[feature]}
    assert got == expected
    for c in stats.contexts[feature]:
        assert c["value"] == pytest.approx(0.5, abs=1e-4)
        assert stats.token(c["tokens"][stats.window]) == ch
        ids = tiny_model.model.to_tokens(TEXTS[c["text"]])[0].tolist()
        for j, t in enumerate(c["tokens"]):
            p = c["position"] + j - stats.window
            assert t == (ids[p] if 0 <= p < len(ids) else -1)
            assert c["acts"][j] == pytest.approx(0.5 if t == _token_id(tiny_model, ch) and p > 0 else 0.0, abs=1e-4)
    n_tokens = sum(len(tiny_model.model.to_tokens(t)[0]) - 1 for t in TEXTS)  # BOS excluded
    assert stats.n_tokens == n_tokens
    assert stats.density[feature] == pytest.approx(len(expected) / n_tokens)
    assert stats.top_token(feature) == ch
    assert feature in stats.search(ch)[:2]


def test_dead_and_always_on_features(stats):
    assert stats.density[2] == 0 and stats.contexts[2] == [] and stats.max_activation[2] == 0
    assert stats.density[3] == 1.0 and stats.mean_active[3] == pytest.approx(0.25)
    assert len(stats.contexts[3]) == stats.k
    assert stats.top_token(2) == ""
    assert "never fired" in stats.context_html(2)


# ---------------------------------------------------------------------------------------------------------------------
# streaming equals a dense recomputation


def _dense(lm, sae, texts):
    result = capture(lm, texts, sites=SITE, keep="full")
    x = result.stats[SITE].full
    return sae.encode(x.to(sae.device, torch.float32)).detach().cpu().double().numpy()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_streamed_statistics_equal_the_dense_activations(tiny_model, planted, batch_size):
    texts = TEXTS + ["quizzical zigzag quartz", "more text with letters"]
    got = feature_stats(tiny_model, planted, texts, site=SITE, k=4, window=2, batch_size=batch_size)
    acts = _dense(tiny_model, planted, texts)
    fired = acts > 0
    assert got.n_tokens == acts.shape[0]
    np.testing.assert_allclose(got.density, fired.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.max_activation, acts.max(0), rtol=1e-4, atol=1e-6)
    mean = np.where(fired.sum(0) > 0, (acts * fired).sum(0) / np.maximum(fired.sum(0), 1), 0)
    np.testing.assert_allclose(got.mean_active, mean, rtol=1e-4, atol=1e-6)
    n_bins = int((HIST_HIGH - HIST_LOW) * HIST_PER_DECADE)
    edges = np.linspace(HIST_LOW, HIST_HIGH, n_bins + 1)
    for f in range(N_SAE):
        values = acts[fired[:, f], f]
        bins = np.clip(np.searchsorted(edges[1:-1], np.log10(values), side="left"), 0, n_bins - 1)
        expected = {str(b): int(c) for b, c in zip(*np.unique(bins, return_counts=True))}
        assert got.hist[f] == expected
        top = np.sort(values)[::-1][:4]
        np.testing.assert_allclose([c["value"] for c in got.contexts[f]], top, rtol=1e-4)


def test_the_streamed_state_does_not_grow_with_the_tokens():
    sizes = []
    for _ in range(2):
        state = _Running(k=5, window=2, n_features=7, device=torch.device("cpu"))
        sizes.append(sum(v.numel() for v in vars(state).values() if isinstance(v, torch.Tensor)))
    assert sizes[0] == sizes[1] == 7 * (5 * (3 + 2 * 5)) + 7 * 3 + 7 * 70 + 71 + 69


# ---------------------------------------------------------------------------------------------------------------------
# logit effects


def test_logit_effects_equal_the_folded_unembedding(tiny_model, planted):
    """Independent transcription of TransformerLens's fold_layer_norm for RMSNorm: W_U' = diag(w_ln_final) W_U, so
    a direction's logits are (d * w) @ W_U."""
    w = tiny_model.model.ln_final.original_component.weight.detach().double().cpu().numpy()
    w_u = tiny_model.weight("W_U").detach().double().cpu().numpy()
    w_dec = planted.W_dec.detach().double().cpu().numpy()
    expected = (w_dec * w) @ w_u
    got = direction_logits(tiny_model, planted.W_dec.detach(), top=5)
    for f in range(N_SAE):
        order = np.argsort(-expected[f])[:5]
        assert got["promoted_ids"][f].tolist() == order.tolist()
        np.testing.assert_allclose(got["promoted"][f].numpy(), expected[f][order], rtol=1e-4, atol=1e-6)
        low = np.argsort(expected[f])[:5]
        assert got["suppressed_ids"][f].tolist() == low.tolist()


def _fake_lm(norm: torch.nn.Module, d: int):
    return types.SimpleNamespace(model=types.SimpleNamespace(ln_final=norm, parameters=norm.parameters), d_model=d,
                                 device=torch.device("cpu"))


def test_folded_norm_centres_for_layernorm_and_reads_gemma_style_gains():
    d = 8
    g = torch.Generator().manual_seed(0)
    layer_norm = torch.nn.LayerNorm(d)
    with torch.no_grad():
        layer_norm.weight.copy_(torch.rand(d, generator=g) + 0.5)
        layer_norm.bias.copy_(torch.randn(d, generator=g))
    dirs = torch.randn(5, d, generator=g)
    expected = (dirs - dirs.mean(1, keepdim=True)) * layer_norm.weight.detach()
    torch.testing.assert_close(folded_norm(_fake_lm(layer_norm, d), dirs), expected, rtol=1e-4, atol=1e-5)

    class OnePlus(torch.nn.Module):  # Gemma's RMSNorm: x / rms(x) * (1 + w)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(d, generator=g) * 0.3)

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    norm = OnePlus()
    torch.testing.assert_close(folded_norm(_fake_lm(norm, d), dirs), dirs * (1 + norm.weight.detach()),
                               rtol=1e-4, atol=1e-5)
    zero = folded_norm(_fake_lm(norm, d), torch.zeros(2, d))
    assert torch.equal(zero, torch.zeros(2, d))


# ---------------------------------------------------------------------------------------------------------------------
# the result


def test_result_round_trips_and_renders(stats, tmp_path):
    again = FeatureStats.from_json(stats.to_json())
    assert again == stats
    frame = stats.to_pandas()
    assert len(frame) == N_SAE and list(frame["feature"]) == list(range(N_SAE))
    assert frame.loc[0, "top_token"] == "q"
    long = stats.to_pandas(long=True)
    assert len(long) == 3 * N_SAE and long[["metric", "site"]].duplicated().sum() == 0
    contexts = stats.contexts_frame(0)
    assert set(contexts["token"]) == {"q"} and list(contexts["rank"]) == list(range(1, len(contexts) + 1))
    html_text = stats._repr_html_()
    assert "SAE features" in html_text and "never fired" in html_text
    figs = stats.figures()
    assert len(figs) == 4  # density + the three densest features that fired
    assert stats.feature_figure(0).data[0].y is not None
    assert "font-weight: bold" in stats.context_html(0)
    assert math.isfinite(stats.seconds)


def test_contexts_are_escaped(stats):
    vocab = dict(stats.vocab)
    vocab[str(stats.contexts[0][0]["tokens"][stats.window])] = "<b>"
    hostile = FeatureStats.from_dict(stats.to_dict() | {"vocab": vocab})
    assert "&lt;b&gt;" in hostile.context_html(0) and "<b>" not in hostile.context_html(0)


def test_search_by_token(stats):
    assert stats.search("Q")[0] == 0  # case-insensitive
    assert stats.search("z")[0] == 1
    assert stats.search("no-such-token-anywhere") == []
    with pytest.raises(ConfigError, match="query"):
        stats.search("")


# ---------------------------------------------------------------------------------------------------------------------
# loading, training at a site, refusals


def test_load_from_a_sae_lens_folder_keeps_the_hook(tiny_model, planted, tmp_path):
    planted.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert sae_hook_name(loaded) == SITE
    from_folder = feature_stats(tiny_model, tmp_path / "sae", TEXTS, k=10, window=3, n_logits=5)
    assert from_folder.site == SITE  # taken from the SAE's metadata
    assert [len(c) for c in from_folder.contexts] == [len(c) for c in
                                                      feature_stats(tiny_model, planted, TEXTS, k=10, window=3,
                                                                    n_logits=5).contexts]
    assert from_folder.sae["path"] == str(tmp_path / "sae")


def test_load_sae_refuses_what_is_not_an_sae_folder(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        load_sae(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cfg.json").write_text("{}")
    with pytest.raises(ConfigError, match="sae_weights.safetensors"):
        load_sae(tmp_path / "half")


def test_the_sae_must_fit_the_site(tiny_model, planted):
    with pytest.raises(ConfigError, match="'site'.*blocks.0.hook_resid_pre"):
        feature_stats(tiny_model, planted, TEXTS, site="blocks.1.hook_resid_pre")
    with pytest.raises(ConfigError, match="glob"):
        feature_stats(tiny_model, planted, TEXTS, site="blocks.*.hook_resid_pre")
    with pytest.raises(SiteError):
        feature_stats(tiny_model, planted, TEXTS, site="blocks.0.hook_nothing")
    from sae_lens import StandardSAE, StandardSAEConfig

    wrong = StandardSAE(StandardSAEConfig(d_in=16, d_sae=4)).eval()
    with pytest.raises(ConfigError, match="'sae'.*d_in = 32"):
        feature_stats(tiny_model, wrong, TEXTS, site=SITE)
    with pytest.raises(ConfigError, match="'site'"):
        feature_stats(tiny_model, wrong, TEXTS)  # no site given and none recorded
    mlp_wide = StandardSAE(StandardSAEConfig(d_in=64, d_sae=4)).eval()
    stats = feature_stats(tiny_model, mlp_wide, TEXTS, site="blocks.0.mlp.hook_post", k=2)
    assert stats.site == "blocks.0.mlp.hook_post" and stats.n_features == 4
    w_out = tiny_model.weight("W_out", 0).detach().double().cpu().numpy()  # neurons write through W_out
    expected = (mlp_wide.W_dec.detach().double().numpy() @ w_out
                * tiny_model.model.ln_final.original_component.weight.detach().double().cpu().numpy()
                ) @ tiny_model.weight("W_U").detach().double().cpu().numpy()
    assert [i for i, _ in stats.promoted[0]] == np.argsort(-expected[0])[:10].tolist()


def test_a_site_that_writes_nothing_to_the_residual_has_no_logit_effects(tiny_model):
    from sae_lens import StandardSAE, StandardSAEConfig

    query_sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=3)).eval()
    stats = feature_stats(tiny_model, query_sae, TEXTS, site="blocks.0.attn.hook_q", k=2)
    assert stats.promoted == [[], [], []] and stats.suppressed == [[], [], []]
    assert "no direct logit effect" in stats.summary()
    stats.feature_figure(0)  # renders without the logit panel's data


@pytest.mark.parametrize(("arg", "value"), [("k", 0), ("window", -1), ("n_logits", 0), ("batch_size", 0),
                                            ("min_activation", -1.0), ("max_length", 1)])
def test_bad_arguments_are_named(tiny_model, planted, arg, value):
    with pytest.raises(ConfigError, match=f"'{arg}'"):
        feature_stats(tiny_model, planted, TEXTS, site=SITE, **{arg: value})


def test_bad_sae_and_texts_are_named(tiny_model, planted):
    with pytest.raises(ConfigError, match="'sae'"):
        feature_stats(tiny_model, 42, TEXTS, site=SITE)
    with pytest.raises(ConfigError, match="texts"):
        feature_stats(tiny_model, planted, [], site=SITE)


def test_train_site_sae_records_its_hook_and_is_cached(tiny_model, tmp_path):
    texts = [f"sample text number {i} with some letters" for i in range(12)]
    first = train_site_sae(tiny_model, texts, site="blocks.1.hook_resid_post", d_sae=16, k=2, epochs=2,
                           cache_dir=tmp_path)
    assert sae_hook_name(first) == "blocks.1.hook_resid_post" and first.path is not None
    again = train_site_sae(tiny_model, texts, site="blocks.1.hook_resid_post", d_sae=16, k=2, epochs=2,
                           cache_dir=tmp_path)
    assert again.path == first.path and sae_hook_name(again) == "blocks.1.hook_resid_post"
    assert json.loads((first.path / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    stats = feature_stats(tiny_model, again, texts, k=3)
    assert stats.site == "blocks.1.hook_resid_post" and stats.sae["fvu"] == first.fvu
    with pytest.raises(ConfigError, match="'site'"):
        feature_stats(tiny_model, again, texts, site="blocks.0.hook_resid_post")
