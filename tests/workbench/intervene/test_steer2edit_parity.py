"""Parity of the Steer2Edit pieces with the reference code Trustworthy-ML-Lab/Steer2Edit (efficient_reasoning/
extract_directions.py, edit.py, evaluate.py). Each ``ref_*`` is an independent numpy transcription of a reference
function, written from the reference source (not from our code), on small synthetic inputs. Agreement: 1e-8 on
float64 quantities (λ, g, k̂, v̂, steering); 1e-6 relative on the edited float32 weights of the tiny model, 1e-5 on the
contrast vectors, which come from float32 activations (the reference itself runs in bfloat16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.intervene.edit import edited, elastic_net_lambda, steer2edit
from workbench.intervene.steer import ContrastVectors, apply_steer, contrast_vectors, vector_steers
from workbench.tasks.sentiment import sentiment_pairs

TOL = 1e-8


# ---------------------------------------------------------------------------------------------------------------------
# transcriptions of the reference (numpy)


def ref_l2_normalize(x, eps=1e-12):  # edit.py, l2_normalize
    return x / (np.linalg.norm(x) + eps)


def ref_elastic_net_lambda(g, rho, alpha):  # edit.py, elastic_net_lambda
    if rho is None or rho <= 0:
        return np.zeros_like(g)
    num = np.clip(np.abs(g) - rho * alpha, 0.0, None)
    return np.sign(g) * (num / (rho * (1.0 - alpha)))


def ref_cos(a, b, axis=0, eps=1e-8):  # torch.nn.functional.cosine_similarity
    return (a * b).sum(axis) / np.maximum(np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis), eps)


def ref_compute_edits(Wo, Wd, v_attn, v_mlp, x_mean_attn, x_mean_mlp, num_heads, head_dim, rho_attn, rho_mlp, alpha):
    """edit.py, compute_edits, for one layer: Wo = o_proj.weight [H, A·D], Wd = down_proj.weight [H, I];
    x_mean_* = 0.5 (pos_mean + neg_mean) of the "pre" directions."""
    vhat_attn, vhat_mlp = ref_l2_normalize(v_attn), ref_l2_normalize(v_mlp)
    attn, mlp = {}, {}
    if rho_attn > 0:
        x_mean_heads = x_mean_attn.reshape(num_heads, head_dim)
        for j in range(num_heads):
            W_block = Wo[:, j * head_dim:(j + 1) * head_dim]
            g = ref_cos(vhat_attn, W_block @ x_mean_heads[j])
            lam = ref_elastic_net_lambda(np.array([g]), rho_attn, alpha)[0]
            if lam == 0.0:
                continue
            k_vec = W_block.T @ vhat_attn
            k_norm = np.linalg.norm(k_vec)
            if k_norm == 0.0:
                continue
            attn[j] = {"lambda": float(lam), "k_hat": k_vec / k_norm}
    if rho_mlp > 0:
        scaled_Wd = Wd * x_mean_mlp[None, :]
        G = ref_cos(vhat_mlp[:, None], scaled_Wd, axis=0)
        lambdas = ref_elastic_net_lambda(G, rho_mlp, alpha)
        k_scalars = Wd.T @ vhat_mlp
        for idx in np.where((lambdas != 0.0) & (k_scalars != 0.0))[0]:
            k_sign = 1.0 if k_scalars[idx] > 0 else -1.0
            mlp[int(idx)] = {"lambda": float(lambdas[idx] * k_sign)}
    return attn, mlp, vhat_attn, vhat_mlp


def ref_apply_rank1_edits(Wo, Wd, attn, mlp, vhat_attn, vhat_mlp, head_dim):
    # evaluate.py, apply_rank1_edits_to_hf_model
    Wo, Wd = Wo.copy(), Wd.copy()
    for j, payload in attn.items():
        Wo[:, j * head_dim:(j + 1) * head_dim] += payload["lambda"] * np.outer(vhat_attn, payload["k_hat"])
    for i, payload in mlp.items():
        Wd[:, i] += payload["lambda"] * vhat_mlp
    return Wo, Wd


def ref_linear_intervention_hook(output, direction, weight):  # evaluate.py, LinearInterventionHook.__call__
    return output + direction * weight


def ref_directions(pos_acts, neg_acts):
    """extract_directions.py: span_mean_per_layer per text (here the span is every token but BOS), the mean over
    texts (torch.stack(...).mean(0)), direction = pos_mean − neg_mean; x̄ (edit.py) = 0.5 (pos_mean + neg_mean)."""
    pos_mean = np.stack([a.mean(0) for a in pos_acts]).mean(0)
    neg_mean = np.stack([a.mean(0) for a in neg_acts]).mean(0)
    return pos_mean - neg_mean, 0.5 * (pos_mean + neg_mean)


# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho, alpha", [(0.3, 0.95), (0.5, 0.8), (0.0, 0.95), (-1.0, 0.95), (0.05, 0.0)])
def test_elastic_net_lambda_equals_the_reference(rho, alpha):
    g = np.random.default_rng(0).uniform(-1, 1, 64)
    expected = ref_elastic_net_lambda(g, rho, alpha)
    got = elastic_net_lambda(torch.from_numpy(g), rho=rho, alpha=alpha).cpu().numpy()
    assert np.abs(got - expected).max() < TOL
    if rho <= 0:
        assert not got.any()  # ρ ≤ 0: this component type is not edited


def test_elastic_net_lambda_still_refuses_nan_and_bad_alpha():
    with pytest.raises(ConfigError, match="'rho'"):
        elastic_net_lambda(torch.ones(2), rho=float("nan"))
    with pytest.raises(ConfigError, match="'alpha'"):
        elastic_net_lambda(torch.ones(2), rho=0.5, alpha=1.0)


def _synthetic(lm, layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = lm.facts
    d_mlp = lm.weight("W_out", layer).shape[0]
    return ContrastVectors(layer=layer, v_attn=torch.randn(f.d_model, generator=g, dtype=torch.float64),
                           v_mlp=torch.randn(f.d_model, generator=g, dtype=torch.float64),
                           v_resid=torch.randn(f.d_model, generator=g, dtype=torch.float64),
                           z_mean=torch.randn(f.n_heads, f.d_head, generator=g, dtype=torch.float64),
                           post_mean=torch.randn(d_mlp, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("rho_attn, rho_mlp", [(0.1, 0.1), (0.1, -1.0), (-1.0, 0.1), (0.2, 0.05)])
def test_steer2edit_equals_compute_edits_and_the_applied_weights(tiny_model, rho_attn, rho_mlp):
    """edit.py compute_edits (factors) and evaluate.py apply_rank1_edits_to_hf_model (weights), on the tiny model's
    weights in Hugging Face orientation, including the heads-only (ρ_mlp = −1) and neurons-only (ρ_attn = −1) grids."""
    lm, layer = tiny_model, 1
    H, D = lm.facts.n_heads, lm.facts.d_head
    vec = _synthetic(lm, layer)
    w_o = lm.weight("W_O", layer).detach().double()  # [A, D, H_model]
    w_out = lm.weight("W_out", layer).detach().double()  # [I, H_model]
    Wo = w_o.reshape(H * D, -1).T.cpu().numpy()  # o_proj.weight [d_model, A·D]
    Wd = w_out.T.cpu().numpy()  # down_proj.weight [d_model, I]
    attn, mlp, vhat_attn, vhat_mlp = ref_compute_edits(
        Wo, Wd, vec.v_attn.cpu().numpy(), vec.v_mlp.cpu().numpy(), vec.z_mean.reshape(-1).cpu().numpy(), vec.post_mean.cpu().numpy(), H, D,
        rho_attn, rho_mlp, 0.95)
    assert (len(attn) > 0) == (rho_attn > 0) and (len(mlp) > 0) == (rho_mlp > 0)
    edits = steer2edit(lm, {layer: vec}, rho=rho_attn, rho_mlp=rho_mlp, alpha=0.95)
    heads = {e.index: e for e in edits if e.kind == "head"}
    neurons = {e.index: e for e in edits if e.kind == "neuron"}
    assert set(heads) == set(attn) and set(neurons) == set(mlp)
    for j, ref in attn.items():
        assert abs(heads[j].lam - ref["lambda"]) < TOL
        assert np.abs(heads[j].k.cpu().numpy() - ref["k_hat"]).max() < TOL
        assert np.abs(heads[j].v.cpu().numpy() - vhat_attn).max() < TOL
    for i, ref in mlp.items():
        assert abs(neurons[i].lam - ref["lambda"]) < TOL
        assert np.abs(neurons[i].v.cpu().numpy() - vhat_mlp).max() < TOL
    Wo_ref, Wd_ref = ref_apply_rank1_edits(Wo, Wd, attn, mlp, vhat_attn, vhat_mlp, D)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with edited(lm, edits):
        Wo_new = lm.weight("W_O", layer).detach().double().reshape(H * D, -1).T.cpu().numpy()
        Wd_new = lm.weight("W_out", layer).detach().double().T.cpu().numpy()
    for new, ref in ((Wo_new, Wo_ref), (Wd_new, Wd_ref)):  # float32 weights (λ up to ~200): relative 1e-6
        assert np.abs(new - ref).max() < 1e-6 * max(1.0, np.abs(ref).max())
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # reverted bit for bit


def test_raw_vector_steering_equals_the_linear_intervention_hook():
    """evaluate.py LinearInterventionHook: output + direction · weight with the raw per-layer direction, at o_proj and
    down_proj outputs of every layer (components_spec "attnmlp"); unit=True is the named option."""
    g = torch.Generator().manual_seed(3)
    vec = ContrastVectors(layer=0, v_attn=3.7 * torch.randn(8, generator=g, dtype=torch.float64),
                          v_mlp=0.2 * torch.randn(8, generator=g, dtype=torch.float64), v_resid=torch.zeros(8),
                          z_mean=torch.zeros(2, 4), post_mean=torch.zeros(16))
    x = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    steers = vector_steers({0: vec}, 0.7)
    assert [s.site for s in steers] == ["blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"]
    for s, v in zip(steers, (vec.v_attn, vec.v_mlp)):
        expected = ref_linear_intervention_hook(x.cpu().numpy(), v.cpu().numpy(), 0.7)
        assert np.abs(apply_steer(x, s).cpu().numpy() - expected).max() < TOL
    unit = vector_steers({0: vec}, 0.7, unit=True)[0]
    assert np.abs(apply_steer(x, unit).cpu().numpy() - (x.cpu().numpy() + 0.7 * vec.v_attn.cpu().numpy() / vec.v_attn.norm().item())
                  ).max() < TOL


def test_contrast_vectors_average_per_text_then_over_texts(tiny_sentiment_model):
    """extract_directions.py: per text the mean over its span, then the mean over texts (long texts do not weigh
    more); x̄ likewise. Activations from plain forwards (float32)."""
    lm = tiny_sentiment_model
    pairs = sentiment_pairs()[:6]
    pos, neg = [p for p, _ in pairs], [n for _, n in pairs]
    pos[0] = pos[0] + " " + pos[1] + " " + pos[2]  # unequal lengths: per-text and pooled means differ
    vec = contrast_vectors(lm, pos, neg, layers=[1])[1]

    def acts(texts, name):
        out = []
        for t in texts:
            _, cache = lm.model.run_with_cache(lm.model.to_tokens(t), names_filter=[name])
            a = cache[name][0, 1:]  # BOS excluded
            out.append(a.reshape(a.shape[0], -1).double().cpu().numpy())
        return out

    for attr, name in (("v_attn", "blocks.1.hook_attn_out"), ("v_mlp", "blocks.1.hook_mlp_out")):
        direction, _ = ref_directions(acts(pos, name), acts(neg, name))
        assert np.abs(getattr(vec, attr).double().cpu().numpy() - direction).max() < 1e-5
    _, z_mean = ref_directions(acts(pos, "blocks.1.attn.hook_z"), acts(neg, "blocks.1.attn.hook_z"))
    assert np.abs(vec.z_mean.double().reshape(-1).cpu().numpy() - z_mean).max() < 1e-5
    _, post = ref_directions(acts(pos, "blocks.1.mlp.hook_post"), acts(neg, "blocks.1.mlp.hook_post"))
    assert np.abs(vec.post_mean.double().cpu().numpy() - post).max() < 1e-5
    pooled = contrast_vectors(lm, pos, neg, layers=[1], average="tokens")[1]
    assert not torch.allclose(pooled.v_attn, vec.v_attn, atol=1e-5)  # the option really pools tokens
    with pytest.raises(ConfigError, match="'average'"):
        contrast_vectors(lm, pos, neg, layers=[1], average="words")
