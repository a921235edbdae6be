"""Language-neuron steering ("Neural FOXP2"): find the units that make a model write Spanish, find the layers where
they form a stable low-rank steering subspace, and steer English prompts with a signed sparse shift — against a dense
difference-of-means vector and random unit sets of the same size.

Reference: "Neural FOXP2 — Language Specific Neuron Steering for Targeted Language Improvement in LLMs" (reference code
PhotonTJ/NeuralFoxP2; the formulas are in :mod:`workbench.intervene.language`, shared/PAPERS.md (e)). Stages:

I. Localise. Last-token residuals (``blocks.L.hook_resid_post``) of paired English/Spanish prompts (train split),
   standardised per dimension (Gemma 3 has an outlier dimension ~100x the others); a sae-lens SAE per layer (cached on
   disk); per SAE feature the selectivity Sel_j = (μ_es − μ_en)/(σ_es + σ_en + 1e-6) and, for the ``n_candidates``
   most Spanish-selective features, the causal lift = median over α of ΔM/α when α·(decoder direction) is added at
   the last token of English prompts, M = Σ p(Spanish tokens) − Σ p(English tokens) at the next token. Features with
   max(Sel, 0)·max(lift, 0) > 0 (the top ``n_features``) are traced to the residual dimensions their decoder direction
   loads on most: the layer's language neurons.
II. Subspace and window. Per layer ΔZ = z_es − z_en over pairs on the language neurons; SVD; rank
   r = min(⌈erank⌉, 12, eigengap); score = top-r spectral mass × bootstrap stability; the window is the contiguous
   run of 3–6 layers with the largest summed score.
III. Steer. Δz = λ·μ_es − β·⟨z, μ̂_en⟩μ̂_en on the language neurons of every window layer, at the last token, during
   greedy generation from held-out English prompts. Measured: the fraction of continuations the offline detector
   calls Spanish, the next-token margin M, the perplexity of the unsteered (English) continuation under steering
   (the cost on English text), the likelihood of the steered continuation under the unsteered model after the
   prompt's Spanish translation (fluency of what was written) and the distinct-token ratio (degeneration: a
   configuration below 0.75 of the unsteered ratio is not counted as a success). Baselines: a dense difference of
   means (λ·(x̄_es − x̄_en) on every dimension of the same layers) and random unit sets of the same size per layer.

Choices that differ from the reference (parameters): the residuals are standardised (z-scored with the statistics of
the SAE's training rows) rather than L2-normalised; the SAE is a TopK SAE by default and is trained on every token of
the training prompts (``sae_rows="all"``; ~2,700 rows instead of ~200 last tokens, which a 1,024-feature SAE would
memorise); the effective rank in the rank rule is Roy–Vetterli on σ (``energy_erank=True``: the reference's σ²).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from workbench.progress import bar as progress_bar

from analyses._language_plots import layer_figure, spectra_figure, stage1_figure, steering_figure
from analyses._language_steering import METHODS, SITE, LayerState, best, degenerate, margins, stage3
from workbench.capture import capture
from workbench.errors import config_error
from workbench.intervene.language import (best_window, causal_lift, selectivity, steering_rank,
                                          subspace_stability, top_mass)
from workbench.intervene.readout import right_padded
from workbench.intervene.steer import Steer
from workbench.registry import Analysis, register
from workbench.results import Config, Result, is_int, is_number, table_figure
from workbench.runner import Inputs
from workbench.sae import ARCHITECTURES, cached_sae, decoder_directions, encode
from workbench.spectra import effective_rank
from workbench.tasks.language import (language_token_ids, load_en_es_pairs,
                                      read_en_es_pairs, split_pairs)

SAE_ROWS = ("all", "last")
STD_FLOOR = 1e-6  # standard deviations below this (constant dimensions) are treated as this


@dataclass(frozen=True)
class LanguageNeuronsConfig(Config):
    """``pairs``: ``"bundled"`` (140 EN/ES pairs written for the project) or a JSONL file of ``{"en", "es"}``; split
    train / held-out by ``test_fraction`` and ``seed``. ``layers``: contiguous layers to analyse (None: the middle
    half, as the reference's 8–23 of 32). SAE: ``architecture``, ``d_sae``, ``k`` (TopK), ``sae_epochs``, ``sae_lr``,
    ``sae_rows`` (``"all"`` tokens of the training prompts or only their ``"last"`` tokens). Stage I:
    ``n_candidates`` most selective features get a causal lift from ``lift_prompts`` English prompts at each of
    ``alphas``; the top ``n_features`` by max(Sel,0)·max(lift,0) are kept, each giving its ``dims_per_feature``
    largest decoder loadings. Stage II: ``rank_cap``, ``energy_erank``, ``resamples``, window length
    ``window_min``..``window_max`` (or a fixed ``window`` [first, last]). Stage III: ``lambdas`` × ``ratios``
    (β = ratio·λ), ``n_random`` random unit sets, ``eval_prompts`` held-out English prompts (None: all),
    ``max_new_tokens`` greedy tokens each."""

    kind = "language_neurons_config"
    pairs: str = "bundled"
    test_fraction: float = 0.3
    layers: list[int] | None = None
    architecture: str = "topk"
    d_sae: int = 1024
    k: int = 32
    sae_epochs: int = 50
    sae_lr: float = 5e-4
    sae_rows: str = "all"
    n_candidates: int = 12
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0, 15.0])
    lift_prompts: int = 8
    n_features: int = 8
    dims_per_feature: int = 8
    rank_cap: int = 12
    energy_erank: bool = False
    resamples: int = 20
    window_min: int = 3
    window_max: int = 6
    window: list[int] | None = None
    lambdas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    n_random: int = 2
    eval_prompts: int | None = 32
    max_new_tokens: int = 16
    batch_size: int = 48
    seed: int = 0

    def validate(self) -> None:
        self.check("pairs", isinstance(self.pairs, str) and bool(self.pairs), '"bundled" or a JSONL file path')
        self.check("test_fraction", is_number(self.test_fraction) and 0 < self.test_fraction < 1, "a number in (0, 1)")
        self.check("layers", self.layers is None or _contiguous(self.layers),
                   "None or a non-empty list of consecutive increasing layer indices >= 0")
        self.check("architecture", self.architecture in ARCHITECTURES, f"one of {list(ARCHITECTURES)}")
        self.check("sae_rows", self.sae_rows in SAE_ROWS, f"one of {list(SAE_ROWS)}")
        for name, low in {"d_sae": 2, "k": 1, "sae_epochs": 1, "n_candidates": 1, "lift_prompts": 1, "n_features": 1,
                          "dims_per_feature": 1, "rank_cap": 1, "resamples": 2, "window_min": 1, "n_random": 0,
                          "max_new_tokens": 1, "batch_size": 1}.items():
            self.check(name, is_int(getattr(self, name)) and getattr(self, name) >= low, f"an int >= {low}")
        self.check("window_max", is_int(self.window_max) and self.window_max >= self.window_min,
                   f"an int >= window_min ({self.window_min})")
        self.check("sae_lr", is_number(self.sae_lr) and self.sae_lr > 0, "a number > 0")
        self.check("alphas", _numbers(self.alphas) and all(a != 0 for a in self.alphas),
                   "a non-empty list of non-zero numbers")
        self.check("lambdas", _numbers(self.lambdas), "a non-empty list of numbers")
        self.check("ratios", _numbers(self.ratios) and all(r >= 0 for r in self.ratios),
                   "a non-empty list of numbers >= 0")
        self.check("energy_erank", isinstance(self.energy_erank, bool), "True or False")
        self.check("window", self.window is None or (isinstance(self.window, list) and len(self.window) == 2
                                                     and all(is_int(v) and v >= 0 for v in self.window)
                                                     and self.window[0] <= self.window[1]),
                   "None or [first, last] layer indices with first <= last")
        self.check("eval_prompts", self.eval_prompts is None or (is_int(self.eval_prompts) and self.eval_prompts >= 1),
                   "None or an int >= 1")
        self.check("seed", is_int(self.seed), "an int")


def _contiguous(layers) -> bool:
    return (isinstance(layers, list) and bool(layers) and all(is_int(v) and v >= 0 for v in layers)
            and all(b == a + 1 for a, b in zip(layers, layers[1:])))


def _numbers(values) -> bool:
    return isinstance(values, list) and bool(values) and all(is_number(v) for v in values)


@dataclass(frozen=True)
class LanguageNeuronsResult(Result):
    """``stage1``: per layer the SAE fit and the candidate features (selectivity, lift, joint score, kept, the
    residual dimensions they load on). ``neurons``: the language-neuron set per layer (as ``str(layer)`` keys).
    ``stage2``: per layer the ΔZ singular values (first 24), erank, rank, top mass, stability and score.
    ``steering``: one row per steering configuration (method, λ, ratio, seed) with its measures; ``examples``:
    continuations of the first held-out prompts for the baseline and the best configuration of each method."""

    kind = "language_neurons"
    title = "Language-neuron steering toward Spanish (Neural FOXP2): SAE features, steering subspace, sparse shifts"
    model: str
    layers: list[int]
    n_train: int
    n_test: int
    n_en_tokens: int
    n_es_tokens: int
    stage1: list[dict]
    neurons: dict[str, list[int]]
    stage2: list[dict]
    window: list[int] | None
    steering: list[dict]
    examples: list[dict]
    verdict: str

    def figures(self) -> list:
        figs = [stage1_figure(self.stage1)]
        if self.stage2:
            figs += [spectra_figure(self.stage2), layer_figure(self.stage2, self.window)]
        if len(self.steering) > 1:
            figs.append(steering_figure(self.steering))
        if self.examples:
            figs.append(table_figure("Continuations of held-out English prompts (best setting of each method)",
                                     ["method", "λ", "β/λ", "prompt", "continuation"],
                                     [[e["method"], e["lam"], e["ratio"], e["prompt"], e["continuation"]]
                                      for e in self.examples]))
        return figs

    def plot(self):
        return steering_figure(self.steering) if len(self.steering) > 1 else stage1_figure(self.stage1)

    def table(self):
        header = ["method", "λ", "β/λ", "seed", "Spanish fraction", "Spanish score", "margin M", "ΔM",
                  "English ppl ratio", "NLL after Spanish prompt", "distinct tokens"]
        rows = [[r["method"], r["lam"], r["ratio"], r["seed"], r["spanish_fraction"], r["spanish_score"], r["margin"],
                 r["delta_margin"], r["ppl_ratio"], r["es_context_nll"], r["distinct"]] for r in self.steering]
        if not rows:
            rows = [[f"L{s['layer']}"] + [None] * (len(header) - 1) for s in self.stage1]
        return header, rows

    def summary(self) -> str:
        return self.verdict


# ---------------------------------------------------------------------------------------------------------------------
# data


def _pairs(config: LanguageNeuronsConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    call = "language_neurons"
    if config.pairs == "bundled":
        train = load_en_es_pairs("train", seed=config.seed, test_fraction=config.test_fraction)
        test = load_en_es_pairs("test", seed=config.seed, test_fraction=config.test_fraction)
        return train, test
    path = Path(config.pairs)
    if not path.is_file():
        raise config_error(call, "pairs", '"bundled" or an existing JSONL file of {"en", "es"} lines', config.pairs)
    pairs = read_en_es_pairs(path)
    return (split_pairs(pairs, "train", seed=config.seed, test_fraction=config.test_fraction, call=call),
            split_pairs(pairs, "test", seed=config.seed, test_fraction=config.test_fraction, call=call))


def _layers(config: LanguageNeuronsConfig, n_layers: int) -> list[int]:
    call = "language_neurons"
    if config.layers is None:
        first, stop = n_layers // 4, n_layers - n_layers // 4
        layers = list(range(first, stop))
    else:
        layers = list(config.layers)
        if layers[-1] >= n_layers:
            raise config_error(call, "layers", f"consecutive layer indices in [0, {n_layers}) (the model has "
                                               f"{n_layers} layers)", config.layers)
    if config.window is not None and not (layers[0] <= config.window[0] and config.window[1] <= layers[-1]):
        raise config_error(call, "window", f"[first, last] inside the analysed layers {layers[0]}..{layers[-1]} "
                                           f"(the model has {n_layers} layers)", config.window)
    return layers


def _digest(pairs) -> str:
    return hashlib.sha256(repr(list(pairs)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------------
# stage I


def _capture(lm, train, layers, config, progress):
    texts = [en for en, _ in train] + [es for _, es in train]
    sites = [SITE.format(l) for l in layers]
    keep = ("per_prompt", "full") if config.sae_rows == "all" else ("per_prompt",)
    return capture(lm, texts, sites=sites, keep=keep, exclude_bos=True, batch_size=16, progress=progress,
                   device=lm.device)


def _lift(lm, layer: int, vectors: torch.Tensor, tokens, last, alphas, en_ids, es_ids) -> torch.Tensor:
    """``[C]`` causal lift of each raw-unit direction in ``vectors`` ``[C, d]``: every (direction, prompt) pair is
    one row of a batch, steered at the prompt's last token."""
    c, p = vectors.shape[0], tokens.shape[0]
    base = margins(lm, tokens, last, en_ids, es_ids)  # [P]
    rep_tokens, rep_last = tokens.repeat(c, 1), last.repeat(c)
    per_row = vectors.repeat_interleave(p, dim=0)  # row b = direction b // p
    deltas = []
    for alpha in alphas:
        steer = Steer(SITE.format(layer), lambda part, a=alpha: a * per_row.to(part.device, part.dtype)[:, None],
                      positions=rep_last.to(lm.device))
        m = margins(lm, rep_tokens, rep_last, en_ids, es_ids, [steer]).reshape(c, p)
        deltas.append((m - base.reshape(1, p)).mean(1))
    return causal_lift(torch.stack(deltas, dim=1), torch.tensor(alphas, dtype=torch.float64))


def _stage1(lm, train, layers, config, en_ids, es_ids, progress) -> tuple[list[dict], list[LayerState]]:
    captured = _capture(lm, train, layers, config, progress)
    n = len(train)
    lift_tokens, lift_last = right_padded(lm, [en for en, _ in train[:config.lift_prompts]])
    rows, states = [], []
    for layer in progress_bar(layers, desc="stage I: SAE, selectivity, lift", disable=not progress, leave=False):
        stats = captured[SITE.format(layer)]
        last = stats.last.to(lm.device).float()
        fit_rows = stats.full.to(lm.device).float() if config.sae_rows == "all" else last
        mean, std = fit_rows.mean(0), fit_rows.std(0).clamp_min(STD_FLOOR)
        z_fit = (fit_rows - mean) / std
        z_en, z_es = (last[:n] - mean) / std, (last[n:] - mean) / std
        key = {"model": lm.name, "site": SITE.format(layer), "rows": config.sae_rows, "standardised": True,
               "pairs": _digest(train)}
        sae = cached_sae(z_fit, key=key, d_sae=config.d_sae, k=min(config.k, config.d_sae),
                         architecture=config.architecture, epochs=config.sae_epochs, lr=config.sae_lr,
                         seed=config.seed, device=lm.device)
        sel = selectivity(encode(sae, z_es), encode(sae, z_en)).float().cpu()
        order = [int(j) for j in torch.argsort(sel, descending=True) if float(sel[j]) > 0][:config.n_candidates]
        directions = decoder_directions(sae).float()  # [F, d] unit rows, standardised space
        lift = (_lift(lm, layer, directions[order].to(lm.device) * std, lift_tokens, lift_last, config.alphas,
                      en_ids, es_ids).float() if order else torch.zeros(0))
        candidates = []
        for j, lf in zip(order, lift.tolist()):
            dims = torch.argsort(directions[j].abs(), descending=True)[:config.dims_per_feature].tolist()
            candidates.append({"feature": j, "selectivity": float(sel[j]), "lift": lf,
                               "joint": max(float(sel[j]), 0.0) * max(lf, 0.0), "dims": dims, "kept": False})
        for c in sorted((c for c in candidates if c["joint"] > 0), key=lambda c: -c["joint"])[:config.n_features]:
            c["kept"] = True
        neurons = sorted({d for c in candidates if c["kept"] for d in c["dims"]})
        rows.append({"layer": layer, "sae_fvu": sae.fvu, "sae_l0": sae.l0, "sae_path": str(sae.path),
                     "n_positive_selectivity": int((sel > 0).sum()), "max_selectivity": float(sel.max()),
                     "candidates": candidates, "n_neurons": len(neurons)})
        states.append(LayerState(layer, mean, std, z_en, z_es, neurons))
    return rows, states


# ---------------------------------------------------------------------------------------------------------------------
# stage II


def _stage2(states: list[LayerState], config) -> list[dict]:
    out = []
    for st in states:
        entry = {"layer": st.layer, "n_neurons": len(st.neurons), "singular_values": [], "erank": 0.0, "rank": 0,
                 "top_mass": 0.0, "stability": 0.0, "score": 0.0}
        if st.neurons:
            delta = (st.z_es - st.z_en)[:, st.neurons].double().cpu()
            s = torch.linalg.svdvals(delta)
            r = min(steering_rank(s, cap=config.rank_cap, energy=config.energy_erank), min(delta.shape))
            mass = top_mass(s, r)
            stab = subspace_stability(delta, r, resamples=config.resamples, seed=config.seed) if r else 0.0
            entry |= {"singular_values": s[:24].tolist(), "erank": float(effective_rank(s * s if config.energy_erank
                                                                                            else s)),
                      "rank": r, "top_mass": mass, "stability": stab, "score": mass * stab}
        out.append(entry)
    return out


def _window(stage2: list[dict], layers: list[int], config) -> list[int] | None:
    if config.window is not None:
        return list(config.window)
    scores = [e["score"] for e in stage2]
    if not any(s > 0 for s in scores):
        return None
    lo = min(config.window_min, len(layers))
    first, last = best_window(scores, min_len=lo, max_len=max(lo, min(config.window_max, len(layers))))
    return [layers[first], layers[last]]


# ---------------------------------------------------------------------------------------------------------------------


def compute(inputs: Inputs, config: LanguageNeuronsConfig) -> LanguageNeuronsResult:
    lm = inputs.model
    layers = _layers(config, lm.facts.n_layers)
    train, test = _pairs(config)
    en_ids, es_ids = language_token_ids(lm.tokenizer, train)
    stage1, states = _stage1(lm, train, layers, config, en_ids, es_ids, inputs.progress)
    neurons = {str(st.layer): st.neurons for st in states}
    stage2, window, steering_rows, examples = [], None, [], []
    if any(st.neurons for st in states):
        stage2 = _stage2(states, config)
        window = _window(stage2, layers, config)
        if window is not None and any(st.neurons for st in states if window[0] <= st.layer <= window[1]):
            steering_rows, examples = stage3(lm, test, states, window, config, en_ids, es_ids, inputs.progress)
    return LanguageNeuronsResult(
        model=inputs.model_name, layers=layers, n_train=len(train), n_test=len(test), n_en_tokens=len(en_ids),
        n_es_tokens=len(es_ids), stage1=stage1, neurons=neurons, stage2=stage2, window=window,
        steering=steering_rows, examples=examples,
        verdict=_verdict(layers, stage1, stage2, window, steering_rows))


def _verdict(layers, stage1, stage2, window, rows) -> str:
    sizes = ", ".join(f"L{s['layer']} {s['n_neurons']}" for s in stage1)
    if not any(s["n_neurons"] for s in stage1):
        return (f"No language neurons found in layers {layers[0]}–{layers[-1]}: no SAE feature had both positive "
                f"Spanish selectivity and a positive causal lift on the next-token margin, so stages II and III were "
                f"not run. Try more layers, more candidates (n_candidates) or larger alphas.")
    lifts = sorted(c["lift"] for s in stage1 for c in s["candidates"])
    positive = sum(v > 0 for v in lifts)
    parts = [f"language neurons per layer: {sizes}",
             f"causal lifts of the most selective features: {positive} of {len(lifts)} positive, median "
             f"{lifts[len(lifts) // 2]:+.2g}" + (" — weak: the neurons come mostly from selectivity"
                                                if positive < 0.75 * len(lifts) else "")]
    if window is None:
        return "; ".join(parts + ["no layer had a non-zero steering score, so no window and no steering"]) + "."
    scores = {e["layer"]: e for e in stage2}
    parts.append(f"window L{window[0]}–L{window[1]} (scores " + ", ".join(
        f"{scores[l]['score']:.2f}" for l in range(window[0], window[1] + 1) if l in scores) + ")")
    if not rows:
        return "; ".join(parts + ["the window's layers have no language neurons, so no steering"]) + "."
    base = rows[0]
    tops = {m: best(rows, m) for m in METHODS if any(r["method"] == m for r in rows)}
    sp = tops["sparse"]
    parts.append(f"unsteered: {100 * base['spanish_fraction']:.0f}% Spanish continuations, margin M "
                 f"{base['margin']:+.3f}")
    parts.append(f"best non-degenerate sparse shift (λ={sp['lam']}, β/λ={sp['ratio']}): "
                 f"{100 * sp['spanish_fraction']:.0f}% Spanish, ΔM {sp['delta_margin']:+.3f}, English perplexity ratio "
                 f"{sp['ppl_ratio']:.3g}, distinct tokens {sp['distinct']:.2f} (unsteered {base['distinct']:.2f})"
                 + (" — every sparse configuration degenerates into repetition" if degenerate(sp, base) else ""))
    matched = [r for r in rows if r["method"] == "dense" and r["ppl_ratio"] <= sp["ppl_ratio"] * 1.05]
    if matched:
        dm = max(matched, key=lambda r: (r["spanish_fraction"], r["margin"]))
        parts.append(f"dense difference of means at no higher English perplexity (λ={dm['lam']}): "
                     f"{100 * dm['spanish_fraction']:.0f}% Spanish, ΔM {dm['delta_margin']:+.3f}, perplexity ratio "
                     f"{dm['ppl_ratio']:.3g}")
    else:
        dn = tops["dense"]
        parts.append("every dense configuration cost more English perplexity than that (best dense: "
                     f"{100 * dn['spanish_fraction']:.0f}% Spanish at ratio {dn['ppl_ratio']:.3g}, λ={dn['lam']})")
    if "random" in tops:
        rd = tops["random"]
        parts.append(f"random unit sets of the same size: at best {100 * rd['spanish_fraction']:.0f}% Spanish, "
                     f"ΔM {rd['delta_margin']:+.3f}")
    gain = sp["spanish_fraction"] - base["spanish_fraction"]
    beats_random = "random" not in tops or sp["spanish_fraction"] > tops["random"]["spanish_fraction"] + 0.05
    if gain < 0.1:
        parts.append("VERDICT: the sparse language-neuron shift did NOT make Spanish the default output here "
                     f"(+{100 * gain:.0f} points)")
    elif not beats_random:
        parts.append("VERDICT: steering moved the output language, but random unit sets of the same size did as "
                     "well — the effect is not specific to the selected language neurons")
    else:
        parts.append(f"VERDICT: the sparse shift on the language neurons raised Spanish continuations by "
                     f"{100 * gain:.0f} points, more than random unit sets of the same size")
    return "; ".join(parts) + "."


register(Analysis(
    name="language_neurons",
    description="Neural FOXP2: SAE language features, steering subspace and window, sparse shifts toward Spanish",
    config=LanguageNeuronsConfig, result=LanguageNeuronsResult, compute=compute, needs_model=True,
    in_default_report=False, default_model="gemma3-270m",
))
