"""Stages I and II of :mod:`analyses.language_neurons` (PhotonTJ/NeuralFoxP2 neural_foxp2/stage1.py, run_stage1;
stage2.py, run_stage2): per layer an SAE on the last-token residuals of the training pairs, the language neurons (SAE
feature indices), and the stage-II steering subspace, rank, mass, stability and window.

Residual scale (``inputs``). The reference L2-normalises the last-token residual before the SAE, h/(‖h‖ + 1e-6)
(stage1.py, train_sae / compute_language_activations), and adds decoded SAE vectors to the RAW residual without
mapping them back to its scale: the lift adds α·(unit decoder column) (stage1.py, SAEFeatureIntervention) and the
stage-III hook encodes the raw, un-normalised last-token residual and adds W_dec Δz (stage3.py,
Stage3InterventionHook). ``inputs="l2"`` does exactly that. ``inputs="standardised"`` (a deviation) z-scores the
residuals with the statistics of the SAE's training rows, and maps decoded vectors back with ·σ (and the hook
standardises h before encoding), so that every quantity lives in one space.

Sites (``read_site``). The reference reads ``hidden_states[L]`` — the INPUT of block L (``blocks.L.hook_resid_pre``) —
for the SAE, selectivity, ΔZ and prototypes (utils.py, get_residuals) but hooks the OUTPUT of block L
(``blocks.L.hook_resid_post``) for the lift and the steering (``get_model_layers(model)[L]``); ``read_site=
"resid_pre"`` keeps that, ``"resid_post"`` (a deviation) reads where it steers.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from workbench.capture import capture
from workbench.capture.hooks import site
from workbench.intervene.language import (
    causal_lift,
    energy_erank,
    rank_language_neurons,
    selectivity,
    steering_directions,
    subspace_stability,
    top_mass,
    top_selective,
)
from workbench.intervene.readout import right_padded
from workbench.intervene.steer import Steer
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.sae import cached_sae, decoder_directions, encode
from workbench.spectra import effective_rank

from .steering import STEER_KIND, margins

L2_EPS = 1e-6  # utils.py normalize_activations / stage1.py compute_language_activations
STD_FLOOR = 1e-6  # standardised inputs: standard deviations below this (constant dimensions) are treated as this
REFERENCE_L1 = 5e-3  # config.py lambda_sparse, on a per-element-mean MSE


@dataclass
class LayerState:
    """What stages I and II leave per layer for stage III (tensors float32 on the model's device, except ``v_r``).

    Example: ``states: list[LayerState] = stage1(lm, train, [8, 9], config, en_ids, es_ids, False)[1]``"""

    layer: int
    sae: object  # a workbench.sae.TrainedSAE
    inputs: str  # "l2" | "standardised"
    mean: torch.Tensor | None  # [d] standardisation (inputs="standardised")
    std: torch.Tensor | None
    z_en: torch.Tensor  # [N, F] SAE codes of the English last tokens (training pairs)
    z_es: torch.Tensor  # [N, F]
    raw_diff: torch.Tensor  # [d] mean raw last-token residual, Spanish − English (the dense baseline)
    neurons: list[int]  # language neurons: SAE feature indices, ranked by joint score
    v_r: torch.Tensor | None = None  # [F, r] stage-II steering subspace (float64)

    def to_sae(self, h: torch.Tensor, *, hook: bool = False) -> torch.Tensor:
        """Residual rows → SAE input rows. In the stage-III hook (``hook=True``) the l2 path feeds the raw residual,
        as the reference's hook does.

        Example: ``z = encode(state.sae, state.to_sae(h))``"""
        if self.inputs == "standardised":
            return (h.float() - self.mean.to(h.device)) / self.std.to(h.device)
        return h.float() if hook else h.float() / (h.float().norm(dim=-1, keepdim=True) + L2_EPS)

    def to_residual(self, v: torch.Tensor) -> torch.Tensor:
        """A decoded SAE-space vector → the residual shift added (l2: unchanged, as the reference; standardised: ·σ).

        Example: ``shift = state.to_residual(decoded)  # decoded: an SAE-space direction, decoded``"""
        return v * self.std.to(v.device) if self.inputs == "standardised" else v


def read_site(config, layer: int) -> str:
    """The hook name the analysis reads at ``layer`` (the config's ``read_site`` kind).

    Example: ``read_site(LanguageNeuronsConfig(), 10)  # "blocks.10.hook_resid_pre"``"""
    return site(config.read_site, layer)


def _digest(pairs) -> str:
    return hashlib.sha256(repr(list(pairs)).encode()).hexdigest()[:16]


def _fit_rows(rows: torch.Tensor, inputs: str):
    if inputs == "standardised":
        mean, std = rows.mean(0), rows.std(0).clamp_min(STD_FLOOR)
        return (rows - mean) / std, mean, std
    return rows / (rows.norm(dim=-1, keepdim=True) + L2_EPS), None, None


def _lift(lm: LoadedModel, layer: int, vectors: torch.Tensor, tokens, last, alphas, en_ids, es_ids) -> torch.Tensor:
    """``[C]`` causal lift of each residual direction in ``vectors`` ``[C, d]`` (PhotonTJ/NeuralFoxP2
    neural_foxp2/stage1.py, compute_feature_lift): α·vector is added to block L's output at each prompt's last token;
    every (direction, prompt) pair is one row of a batch."""
    c, p = vectors.shape[0], tokens.shape[0]
    base = margins(lm, tokens, last, en_ids, es_ids)  # [P]
    rep_tokens, rep_last = tokens.repeat(c, 1), last.repeat(c)
    per_row = vectors.repeat_interleave(p, dim=0)  # row b = direction b // p
    deltas = []
    for alpha in alphas:
        steer = Steer(site(STEER_KIND, layer), lambda part, a=alpha: a * per_row.to(part.device, part.dtype)[:, None],
                      positions=rep_last.to(lm.device))
        m = margins(lm, rep_tokens, rep_last, en_ids, es_ids, [steer]).reshape(c, p)
        deltas.append((m - base.reshape(1, p)).mean(1))
    return causal_lift(torch.stack(deltas, dim=1), torch.tensor(alphas, dtype=torch.float64))


def _sae(lm: LoadedModel, fit, layer, train, config):
    l1 = config.l1_coefficient if config.l1_coefficient is not None else REFERENCE_L1 * fit.shape[1]
    key = {"model": lm.name, "site": read_site(config, layer), "rows": config.sae_rows,
           "inputs": config.inputs, "pairs": _digest(train)}
    return cached_sae(fit, key=key, d_sae=config.d_sae, k=min(config.k, config.d_sae), architecture=config.architecture,
                      epochs=config.sae_epochs, lr=config.sae_lr, batch_size=config.sae_batch, l1_coefficient=l1,
                      seed=config.seed, device=lm.device)


def stage1(lm: LoadedModel, train, layers, config, en_ids, es_ids, progress) -> tuple[list[dict], list[LayerState]]:
    """Stage I per layer: capture the EN and ES texts, fit an SAE on the residuals, and keep the features both selective
    for Spanish and causal (lift of the Spanish margin); returns the table rows and each layer's state.

    Example: ``rows, states = stage1(lm, train, [8, 9], config, en_ids, es_ids, progress=False)``"""
    texts = [en for en, _ in train] + [es for _, es in train]
    keep = ("per_prompt", "full") if config.sae_rows == "all" else ("per_prompt",)
    captured = capture(lm, texts, sites=[read_site(config, l) for l in layers], keep=keep, exclude_bos=True,
                       batch_size=16, progress=progress, device=lm.device)
    n = len(train)
    lift_tokens, lift_last = right_padded(lm, [en for en, _ in train[:config.lift_prompts]])
    rows, states = [], []
    for layer in progress_bar(layers, desc="stage I: SAE, selectivity, lift", disable=not progress, leave=False):
        stats = captured[read_site(config, layer)]
        last = stats.last.to(lm.device).float()
        fit, mean, std = _fit_rows(stats.full.to(lm.device).float() if config.sae_rows == "all" else last,
                                   config.inputs)
        sae = _sae(lm, fit, layer, train, config)
        st = LayerState(layer, sae, config.inputs, mean, std, None, None, last[n:].mean(0) - last[:n].mean(0), [])
        st.z_en, st.z_es = encode(sae, st.to_sae(last[:n])), encode(sae, st.to_sae(last[n:]))
        sel = selectivity(st.z_es, st.z_en).float().cpu()
        cands = top_selective(sel, min(config.n_candidates, sel.numel()))
        directions = decoder_directions(sae).float().to(lm.device)  # [F, d] unit rows (sae-lens folds the norms)
        # A candidate with Sel <= 0 has joint score 0 whatever its lift, so its lift is not computed (NaN in the
        # table; it counts as 0 in the ranking): the language neurons are exactly the reference's, at less cost.
        live = [i for i, j in enumerate(cands) if float(sel[j]) > 0]
        lift = torch.full((len(cands),), float("nan"))
        if live:
            lift[live] = _lift(lm, layer, st.to_residual(directions[[cands[i] for i in live]]), lift_tokens,
                               lift_last, config.alphas, en_ids, es_ids).float().cpu()
        neurons, _ = rank_language_neurons(cands, sel, torch.nan_to_num(lift, nan=0.0))
        st.neurons = neurons[:config.n_features] if config.n_features is not None else neurons
        kept = set(st.neurons)
        candidates = [{"feature": j, "selectivity": float(sel[j]), "lift": None if math.isnan(lf) else lf,
                       "joint": 0.0 if math.isnan(lf) else max(float(sel[j]), 0.0) * max(lf, 0.0), "kept": j in kept}
                      for j, lf in zip(cands, lift.tolist())]
        rows.append({"layer": layer, "sae_fvu": sae.fvu, "sae_l0": sae.l0, "sae_path": str(sae.path),
                     "n_positive_selectivity": int((sel > 0).sum()), "max_selectivity": float(sel.max()),
                     "candidates": candidates, "n_neurons": len(st.neurons)})
        states.append(st)
    return rows, states


def stage2(states: list[LayerState], config) -> list[dict]:
    """Per layer (PhotonTJ/NeuralFoxP2 neural_foxp2/stage2.py, run_stage2): ΔZ = z_es − z_en on the language
    neurons, its singular values (first 24), erank, rank, top-r mass, bootstrap stability and score = mass ×
    stability; leaves V_r in the state for stage III.

    Example: ``rows = stage2(states, config)``"""
    out = []
    for st in states:
        entry = {"layer": st.layer, "n_neurons": len(st.neurons), "singular_values": [], "erank": 0.0, "rank": 0,
                 "top_mass": 0.0, "stability": 0.0, "score": 0.0}
        if st.neurons:
            delta = (st.z_es - st.z_en).double().cpu()
            s, st.v_r, r = steering_directions(delta, st.neurons, cap=config.rank_cap, energy=config.energy_erank)
            mass = top_mass(s, r)
            stab = subspace_stability(delta, st.neurons, resamples=config.resamples, seed=config.seed,
                                      cap=config.rank_cap, energy=config.energy_erank)
            er = energy_erank(s) if config.energy_erank else float(effective_rank(s))
            entry |= {"singular_values": s[:24].tolist(), "erank": er, "rank": r, "top_mass": mass,
                      "stability": stab, "score": mass * stab}
        out.append(entry)
    return out
