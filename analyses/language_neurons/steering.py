"""Stage III of :mod:`analyses.language_neurons` (PhotonTJ/NeuralFoxP2 neural_foxp2/stage3.py): the sparse (SAE
language neurons, through the stage-II subspace), dense (difference of means) and random (SAE features of the same
number) steering configurations, and their measurement on held-out English prompts (Spanish fraction, next-token margin,
English perplexity ratio, fluency after the Spanish prompt, distinct-token ratio)."""

from __future__ import annotations

import math

import torch

from workbench.capture.hooks import site
from workbench.intervene.generation import generate
from workbench.intervene.language import prototypes, reference_shift, steering_directions
from workbench.intervene.readout import UNEMBED_INPUT, continuation_nll, position_logits, unembed
from workbench.intervene.steer import Steer, steering
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.tasks.language import detect_language, language_margin, spanish_score

STEER_KIND = "resid_post"  # the output of block L, where the reference's hooks sit
METHODS = ("none", "sparse", "dense", "random")
DEGENERATE_FRACTION = 0.75


def margins(lm: LoadedModel, tokens, last, en_ids, es_ids, steers=()) -> torch.Tensor:
    """``[B]`` next-token margins M at ``last``; one forward for the whole batch, because per-example steers
    (``positions`` a ``[B]`` tensor) index its rows.

    Example: ``m = margins(lm, tokens, last, en_ids, es_ids)``"""
    with steering(lm, list(steers)):
        logits = position_logits(lm, tokens, last, batch_size=tokens.shape[0])
    return language_margin(logits, en_ids, es_ids)


def _shift(st, features: list[int], v_r: torch.Tensor, lam: float, beta: float):
    """The stage-III shift of one layer (PhotonTJ/NeuralFoxP2 neural_foxp2/stage3.py, Stage3InterventionHook):
    z = SAE.encode(h) (l2 path: the raw residual, as the reference's hook), Δz = λ·μ_tgt − β·P(⟨z, μ_en⟩μ_en) on
    ``features``, and the residual gains the decoder's LINEAR part W_decᵀΔz — no decoder bias, as the reference's
    tied decode ``z @ W.T`` has none — unscaled on the l2 path (the reference adds it to the raw residual), ·σ on the
    standardised path. μ_en is built from the training pairs' English prompts (the reference: its weak prompts)."""
    from workbench.sae import decoder_directions, encode

    mu_tgt, mu_en, proj = prototypes(st.z_en, st.z_es, st.z_en, features, v_r)
    w_dec = decoder_directions(st.sae).double()  # [F, d]

    def shift(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        z = encode(st.sae, st.to_sae(flat, hook=True))
        dz = reference_shift(z, mu_tgt, mu_en, proj, features, lam=lam, beta=beta)
        dh = st.to_residual((dz @ w_dec.to(x.device)).float())
        return dh.reshape(x.shape).to(x.dtype)
    return shift


def _method_steers(method: str, window_states: list, lam: float, ratio: float, seed: int | None):
    """``positions -> [Steer]`` for one configuration (positions: "last", a [B] index tensor or a [B, T] mask)."""
    parts = []
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    for st in window_states:
        if method == "dense":
            parts.append((st.layer, lam * st.raw_diff))
            continue
        if method == "sparse":
            features, v_r = st.neurons, st.v_r
        else:  # random SAE features, as many as the layer's language neurons, through the same stage II
            features = torch.randperm(st.z_en.shape[1], generator=gen)[:len(st.neurons)].tolist() if st.neurons \
                else []
            v_r = steering_directions((st.z_es - st.z_en).double().cpu(), features)[1] if features else None
        if not features or v_r is None:
            continue
        parts.append((st.layer, _shift(st, features, v_r, lam, ratio * lam)))
    return lambda positions: [Steer(site(STEER_KIND, layer), vec, positions=positions) for layer, vec in parts]


def generate_with_margins(lm: LoadedModel, rows: list[torch.Tensor], en_ids, es_ids, steers, config
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(continuations, margins [B])``: greedy continuations of the prompts ``rows`` under generation-time steering
    (``steers("last")``), and the next-token margin M at each prompt's last token read off the same prefill — the
    unembedding's input there, recorded while generating, unembedded — instead of a second steered forward over the
    prompts (equal to :func:`margins`, test).

    Example: ``gens, m = generate_with_margins(lm, rows, en_ids, es_ids, steers, config)``"""
    with steering(lm, steers("last")):
        gen = generate(lm, rows, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                       record=[UNEMBED_INPUT], desc="stage III: generating")
    first = torch.stack([states[0] for states in gen.states[UNEMBED_INPUT]])  # [B, d], the prefill's last position
    dtype = next(lm.model.parameters()).dtype
    return gen.ids, language_margin(unembed(lm, first.to(lm.device, dtype)), en_ids, es_ids)


def _evaluate(lm: LoadedModel, prompts, data, steers, method, lam, ratio, seed, config) -> dict:
    make = steers or (lambda positions: [])
    gens, margin = generate_with_margins(lm, data["rows"], data["en"], data["es"], make, config)
    texts = [lm.tokenizer.decode(g, skip_special_tokens=True) for g in gens]
    nll = continuation_nll(lm, prompts, data["base_gens"], steers=make) if "base_gens" in data else None
    # fluency of what the steered model wrote: its likelihood under the unsteered model after the Spanish prompt
    es_nll = continuation_nll(lm, data["es_prompts"], gens)
    distinct = [len(set(g.tolist())) / len(g) for g in gens if len(g)]
    return {"method": method, "lam": lam, "ratio": ratio, "seed": seed,
            "spanish_fraction": sum(detect_language(t) == "es" for t in texts) / len(texts),
            "english_fraction": sum(detect_language(t) == "en" for t in texts) / len(texts),
            "spanish_score": sum(spanish_score(t) for t in texts) / len(texts),
            "margin": float(margin.mean()), "delta_margin": float(margin.mean()) - data.get("base_margin", 0.0),
            "ppl_ratio": None if nll is None else math.exp(float(torch.nanmean(nll)) - data["base_nll"]),
            "es_context_nll": float(torch.nanmean(es_nll)),
            "distinct": sum(distinct) / max(len(distinct), 1), "texts": texts, "gens": gens}


def stage3(lm: LoadedModel, test, states, window, config, en_ids, es_ids, progress) -> tuple[list[dict], list[dict]]:
    """Stage III: steer held-out English prompts toward Spanish with the language-neuron subspace of the window and with
    dense and random baselines, at each strength; Spanish fraction, margin change and perplexity cost per setting.

    Example: ``rows, examples = stage3(lm, test, states, (8, 11), config, en_ids, es_ids, progress=False)``"""
    chosen = test[:config.eval_prompts]
    prompts = [en for en, _ in chosen]
    rows = [lm.model.to_tokens(p)[0].cpu() for p in prompts]
    data = {"rows": rows, "en": en_ids, "es": es_ids, "es_prompts": [es for _, es in chosen]}
    window_states = [st for st in states if window[0] <= st.layer <= window[1]]
    plan = [("sparse", lam, ratio, None) for lam in config.lambdas for ratio in config.ratios]
    plan += [("dense", lam, 0.0, None) for lam in config.lambdas]
    bar = progress_bar(total=1 + len(plan) + config.n_random * len(config.lambdas), desc="stage III: steering",
                       disable=not progress, leave=False)
    base = _evaluate(lm, prompts, data, None, "none", 0.0, 0.0, None, config)
    base_gens = base["gens"]  # the unsteered continuations, generated once
    base_nll = continuation_nll(lm, prompts, base_gens)
    data |= {"base_gens": base_gens, "base_nll": float(torch.nanmean(base_nll)), "base_margin": base["margin"]}
    base |= {"ppl_ratio": 1.0, "delta_margin": 0.0}
    bar.update()
    rows = [base]
    for method, lam, ratio, seed in plan:
        rows.append(_evaluate(lm, prompts, data, _method_steers(method, window_states, lam, ratio, seed), method,
                              lam, ratio, seed, config))
        bar.update()
    best_ratio = best(rows, "sparse")["ratio"] if any(r["method"] == "sparse" for r in rows) else 0.0
    for seed in range(config.n_random):
        for lam in config.lambdas:
            steers = _method_steers("random", window_states, lam, best_ratio, config.seed + 1 + seed)
            rows.append(_evaluate(lm, prompts, data, steers, "random", lam, best_ratio, seed, config))
            bar.update()
    bar.close()
    examples = []
    for method in METHODS:
        chosen = [r for r in rows if r["method"] == method]
        if chosen:
            top = best(rows, method)
            examples += [{"method": method, "lam": top["lam"], "ratio": top["ratio"], "prompt": p, "continuation": t}
                         for p, t in zip(prompts[:3], top["texts"][:3])]
    for r in rows:
        r.pop("texts")
        r.pop("gens")
    return rows, examples


def degenerate(row: dict, base: dict) -> bool:
    """A steered configuration whose continuations repeat themselves: distinct-token ratio below
    ``DEGENERATE_FRACTION`` of the unsteered one ("y a la la la y a la ...").

    Example: ``[row for row in rows if not degenerate(row, base)]``"""
    return row["distinct"] < DEGENERATE_FRACTION * base["distinct"]


def best(rows: list[dict], method: str) -> dict:
    """The configuration of ``method`` with the largest Spanish fraction among the non-degenerate ones (all of them
    if every one is degenerate); ties: the smaller English perplexity ratio.

    Example: ``best(rows, "sparse")["lam"]``"""
    chosen = [r for r in rows if r["method"] == method]
    fluent = [r for r in chosen if not degenerate(r, rows[0])] or chosen
    return max(fluent, key=lambda r: (r["spanish_fraction"], -r["ppl_ratio"]))
