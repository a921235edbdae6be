"""Stage III of :mod:`analyses.language_neurons`: the per-layer state stage I leaves, the sparse / dense / random
steering configurations, and their measurement on held-out English prompts (Spanish fraction, next-token margin,
English perplexity ratio, fluency after the Spanish prompt, distinct-token ratio)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from workbench.progress import bar as progress_bar

from workbench.intervene.language import sparse_shift
from workbench.intervene.readout import continuation_nll, greedy_continuations, position_logits, right_padded
from workbench.intervene.steer import Steer, steering
from workbench.tasks.language import detect_language, language_margin, spanish_score

SITE = "blocks.{}.hook_resid_post"
METHODS = ("none", "sparse", "dense", "random")
DEGENERATE_FRACTION = 0.75


@dataclass
class LayerState:
    """What stage I leaves per layer for stages II and III (tensors on the model's device, float32)."""

    layer: int
    mean: torch.Tensor  # [d] standardisation
    std: torch.Tensor  # [d]
    z_en: torch.Tensor  # [N, d] standardised last-token residuals
    z_es: torch.Tensor
    neurons: list[int]

    def mu(self, side: str) -> torch.Tensor:
        return (self.z_es if side == "es" else self.z_en).mean(0)


def margins(lm, tokens, last, en_ids, es_ids, steers=()) -> torch.Tensor:
    """``[B]`` next-token margins M at ``last``; one forward for the whole batch, because per-example steers
    (``positions`` a ``[B]`` tensor) index its rows."""
    with steering(lm, list(steers)):
        logits = position_logits(lm, tokens, last, batch_size=tokens.shape[0])
    return language_margin(logits, en_ids, es_ids)


def _shift(st: LayerState, mask: torch.Tensor, lam: float, beta: float):
    mu_es, mu_en = st.mu("es"), st.mu("en")

    def shift(x: torch.Tensor) -> torch.Tensor:
        z = (x.float() - st.mean.to(x.device)) / st.std.to(x.device)
        dz = sparse_shift(z, mu_es.to(x.device), mu_en.to(x.device), mask.to(x.device), lam=lam, beta=beta)
        return (dz * st.std.to(x.device)).to(x.dtype)
    return shift


def _method_steers(method: str, window_states: list[LayerState], lam: float, ratio: float, seed: int | None):
    """``positions -> [Steer]`` for one configuration (positions: "last", a [B] index tensor or a [B, T] mask)."""
    parts = []
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    for st in window_states:
        d = st.mean.shape[0]
        if method == "dense":
            vector = lam * (st.mu("es") - st.mu("en")) * st.std
            parts.append((st.layer, vector))
            continue
        if method == "sparse":
            units = st.neurons
        else:  # random: a set of the same size, drawn per layer
            units = torch.randperm(d, generator=gen)[:len(st.neurons)].tolist()
        if not units:
            continue
        mask = torch.zeros(d, dtype=torch.bool)
        mask[units] = True
        parts.append((st.layer, _shift(st, mask, lam, ratio * lam)))
    return lambda positions: [Steer(SITE.format(layer), vec, positions=positions) for layer, vec in parts]


def _evaluate(lm, prompts, data, steers, method, lam, ratio, seed, config) -> dict:
    make = steers or (lambda positions: [])
    with steering(lm, make("last")):
        gens = greedy_continuations(lm, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    texts = [lm.tokenizer.decode(g, skip_special_tokens=True) for g in gens]
    margin = margins(lm, data["tokens"], data["last"], data["en"], data["es"],
                      make(data["last"].to(lm.device)))
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
            "distinct": sum(distinct) / max(len(distinct), 1), "texts": texts}


def stage3(lm, test, states, window, config, en_ids, es_ids, progress) -> tuple[list[dict], list[dict]]:
    chosen = test[:config.eval_prompts]
    prompts = [en for en, _ in chosen]
    tokens, last = right_padded(lm, prompts)
    data = {"tokens": tokens, "last": last, "en": en_ids, "es": es_ids, "es_prompts": [es for _, es in chosen]}
    window_states = [st for st in states if window[0] <= st.layer <= window[1]]
    plan = [("sparse", lam, ratio, None) for lam in config.lambdas for ratio in config.ratios]
    plan += [("dense", lam, 0.0, None) for lam in config.lambdas]
    bar = progress_bar(total=1 + len(plan) + config.n_random * len(config.lambdas), desc="stage III: steering",
                       disable=not progress, leave=False)
    base = _evaluate(lm, prompts, data, None, "none", 0.0, 0.0, None, config)
    base_gens = greedy_continuations(lm, prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
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
    return rows, examples


def degenerate(row: dict, base: dict) -> bool:
    """A steered configuration whose continuations repeat themselves: distinct-token ratio below
    ``DEGENERATE_FRACTION`` of the unsteered one ("y a la la la y a la ...")."""
    return row["distinct"] < DEGENERATE_FRACTION * base["distinct"]


def best(rows: list[dict], method: str) -> dict:
    """The configuration of ``method`` with the largest Spanish fraction among the non-degenerate ones (all of them
    if every one is degenerate); ties: the smaller English perplexity ratio."""
    chosen = [r for r in rows if r["method"] == method]
    fluent = [r for r in chosen if not degenerate(r, rows[0])] or chosen
    return max(fluent, key=lambda r: (r["spanish_fraction"], -r["ppl_ratio"]))
