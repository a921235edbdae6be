"""Language-neuron steering ("Neural FOXP2"): find the SAE features that make a model write Spanish, find the layers
where they form a stable low-rank steering subspace, and steer English prompts with a signed sparse shift in SAE-code
space — against a dense difference-of-means vector and random SAE-feature sets of the same size.

Reference: "Neural FOXP2 — Language Specific Neuron Steering for Targeted Language Improvement in LLMs", reference code
PhotonTJ/NeuralFoxP2 (neural_foxp2/stage1.py, stage2.py, stage3.py); the formulas are in
:mod:`workbench.intervene.language`, stages I–II in :mod:`analyses._language_stages`, stage III in
:mod:`analyses._language_steering`. By default (``path == "reference"``) the analysis computes what the reference does:

I. Localise (stage1.py, run_stage1). Last-token residuals of the paired English/Spanish training prompts at
   ``hidden_states[L]`` (``blocks.L.hook_resid_pre``), L2-normalised h/(‖h‖+1e-6); a ReLU SAE per layer (sae-lens
   "standard", 1,024 features, MSE + L1, 150 epochs, lr 5e-4, batch 512); per SAE feature the selectivity
   Sel_j = (μ_es − μ_en)/(σ_es + σ_en + 1e-6); for the 50 most selective (``np.argsort(sel)[-50:]``) the causal lift
   = median over α ∈ {0.5, 1, 2, 5, 10, 15} of mean ΔM/α, adding α·(unit decoder column) to block L's output at the
   last token; M = Σ p(Spanish tokens) − Σ p(English tokens) at the next token, token sets by Unicode range from the
   raw vocabulary (data.py, build_language_token_sets). The language neurons are the SAE FEATURE indices with
   max(Sel, 0)·max(lift, 0) > 0, ranked by it.
II. Subspace and window (stage2.py). ΔZ = z_es − z_en in SAE-code space, zero outside the language neurons; SVD;
   r = max(1, min(⌈erank(σ²)⌉, 12, eigengap over the first 12 ratio gaps)); score = top-r mass × bootstrap
   stability (20 resamples, r re-chosen on each, median tr(PᵢPⱼ)/tr(Pᵢ)); window = the contiguous 3–6 layers with
   the largest summed score.
III. Steer (stage3.py). μ_es = normalize(P·normalize(mean ΔZ on the neurons)), μ_en = normalize(P·normalize(mean
   z_en on the neurons)), P = V_r V_rᵀ from stage II; at the last token of every forward at block L's output in the
   window: z = SAE.encode(h) (raw h, as the reference's hook), Δz = λ·μ_es − β·P(⟨z, μ_en⟩μ_en) on the language
   neurons, h += W_dec Δz (the decoder's linear part; no bias, as the reference's tied decode). Measured during greedy
   generation from held-out English prompts: the fraction of continuations the offline detector calls Spanish, the
   next-token margin M (the reference's only measure), the perplexity of the unsteered continuation under steering
   (the cost on English), the likelihood of the steered continuation under the unsteered model after the prompt's
   Spanish translation (fluency) and the distinct-token ratio (degeneration: below 0.75 of the unsteered ratio is not
   counted as a success). Baselines: λ·(x̄_es − x̄_en) on every dimension of the same layers; random SAE-feature
   sets of the same size per layer, through the same stage II and III.

Deviations always present (scale, data): 140 bundled pairs (98 train) instead of 2,500 OPUS-100 pairs; ``lift_prompts``
(8) of the training pairs' English prompts instead of the 300 "weak" prompts for the lift, and the training English
prompts for μ_en (the reference uses its evaluation prompts); the SAE is sae-lens's untied ReLU SAE (W_enc, W_dec,
b_dec subtracted before encoding; L1 weighted by decoder norms, coefficient 5e-3·d on a per-row summed MSE, which
keeps the ratio of the reference's 5e-3 on a per-element
mean MSE; decoder rows folded to unit norm at the end) where the
reference ties W_dec = W_encᵀ, has no b_dec and renormalises decoder columns after every epoch; each row of a batch
gets its own z in the hook (the reference's hook uses the first row's). Deviations as options (``path`` names them):
``inputs="standardised"``, ``architecture="topk"``, ``sae_rows="all"``, ``token_sets="pairs"``,
``read_site="resid_post"``, ``energy_erank=False``, other SAE sizes or epochs, ``n_features`` caps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from workbench.analysis import Analysis, Inputs
from workbench.errors import config_error
from workbench.intervene.language import best_window
from workbench.models.loaded import LoadedModel
from workbench.results import Config, Result, setting, table_figure
from workbench.sae import ARCHITECTURES
from workbench.tasks.language import (
    language_token_ids,
    load_en_es_pairs,
    read_en_es_pairs,
    split_pairs,
    unicode_token_ids,
)
from workbench.validation import SEED, Bool, Choice, Int, ListOf, Number, Optional, Str

from .plots import layer_figure, spectra_figure, stage1_figure, steering_figure
from .stages import stage1, stage2
from .steering import METHODS, best, degenerate, stage3

SAE_ROWS = ("last", "all")
INPUTS = ("l2", "standardised")
READ_SITES = ("resid_pre", "resid_post")
TOKEN_SETS = ("unicode", "pairs")
# The reference's choices (PhotonTJ/NeuralFoxP2 config.py and stage1-3.py); any other value makes the run a variant.
REFERENCE = {"inputs": "l2", "read_site": "resid_pre", "architecture": "standard", "sae_rows": "last",
             "token_sets": "unicode", "d_sae": 1024, "sae_epochs": 150, "sae_lr": 5e-4, "sae_batch": 512,
             "l1_coefficient": None, "n_candidates": 50, "n_features": None, "rank_cap": 12, "energy_erank": True,
             "resamples": 20, "window_min": 3, "window_max": 6, "alphas": [0.5, 1.0, 2.0, 5.0, 10.0, 15.0]}


@dataclass(frozen=True)
class LanguageNeuronsConfig(Config):
    """``pairs``: ``"bundled"`` (140 EN/ES pairs written for the project) or a JSONL file of ``{"en", "es"}``; split
    train / held-out by ``test_fraction`` and ``seed``. ``layers``: contiguous layers to analyse (None: the middle
    half, as the reference's 8–23 of 32). Residuals: ``inputs`` (``"l2"``: h/(‖h‖+1e-6), the reference;
    ``"standardised"``: z-scored), ``read_site`` (``"resid_pre"``: the reference's ``hidden_states[L]``;
    ``"resid_post"``: block L's output, where the lift and the steering act), ``sae_rows`` (``"last"`` tokens, the
    reference, or ``"all"`` tokens of the training prompts). SAE: ``architecture`` (``"standard"`` ReLU + L1, the
    reference; ``"topk"`` with ``k``), ``d_sae``, ``sae_epochs``, ``sae_lr``, ``sae_batch``, ``l1_coefficient``
    (None: 5e-3·d_model, the reference's 5e-3 for sae-lens's per-row summed MSE). Stage I: ``token_sets``
    (``"unicode"``: the reference's script ranges on the raw vocabulary; ``"pairs"``: word-initial tokens seen on one
    side of the pairs only); the ``n_candidates`` most selective features get a causal lift from ``lift_prompts``
    English prompts at each of ``alphas``; every feature with max(Sel,0)·max(lift,0) > 0 is a language neuron
    (``n_features``: keep only the top so many). Stage II: ``rank_cap``, ``energy_erank``, ``resamples``, window
    length ``window_min``..``window_max`` (or a fixed ``window`` [first, last]). Stage III: ``lambdas`` × ``ratios``
    (β = ratio·λ), ``n_random`` random feature sets, ``eval_prompts`` held-out English prompts (None: all),
    ``max_new_tokens`` greedy tokens each. Fields listed in ``REFERENCE`` at other values make the run a variant
    (the result's ``path``).

    Example: ``LanguageNeuronsConfig(layers=[8, 9, 10, 11], lambdas=[1.0])``"""

    kind = "language_neurons_config"
    pairs: str = "bundled"
    test_fraction: float = 0.3
    layers: list[int] | None = None
    inputs: str = "l2"
    read_site: str = "resid_pre"
    sae_rows: str = "last"
    architecture: str = "standard"
    d_sae: int = 1024
    k: int = 32
    sae_epochs: int = 150
    sae_lr: float = 5e-4
    sae_batch: int = 512
    l1_coefficient: float | None = None
    token_sets: str = "unicode"
    n_candidates: int = 50
    alphas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0, 15.0])
    lift_prompts: int = 8
    n_features: int | None = None
    rank_cap: int = 12
    energy_erank: bool = True
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

    def path(self) -> str:
        """``"reference"`` or ``"variant (field=value, ...)"`` naming every field that differs from ``REFERENCE``.

        Example: ``LanguageNeuronsConfig(inputs="standardised").path()  # "variant (inputs='standardised')"``"""
        diff = [f"{k}={getattr(self, k)!r}" for k, v in REFERENCE.items() if getattr(self, k) != v]
        return "reference" if not diff else "variant (" + ", ".join(diff) + ")"

    constraints = {
        "pairs": Str(nonempty=True, allowed_text='"bundled" or a JSONL file path'),
        "test_fraction": Number(low=0, high=1, low_open=True, high_open=True),
        "layers": Optional(ListOf(Int(low=0), nonempty=True).where(
            lambda layers: all(b == a + 1 for a, b in zip(layers, layers[1:])),
            "a non-empty list of consecutive increasing layer indices >= 0")),
        "inputs": Choice(INPUTS), "read_site": Choice(READ_SITES), "sae_rows": Choice(SAE_ROWS),
        "architecture": Choice(ARCHITECTURES), "d_sae": Int(low=2), "k": Int(low=1), "sae_epochs": Int(low=1),
        "sae_lr": Number(low=0, low_open=True), "sae_batch": Int(low=1), "l1_coefficient": Optional(Number(low=0)),
        "token_sets": Choice(TOKEN_SETS), "n_candidates": Int(low=1),
        "alphas": ListOf(Number().where(lambda a: a != 0, "a non-zero number", "non-zero numbers"), nonempty=True),
        "lift_prompts": Int(low=1), "n_features": Optional(Int(low=1)), "rank_cap": Int(low=1), "energy_erank": Bool(),
        "resamples": Int(low=2), "window_min": Int(low=1), "window_max": Int(),
        "window": Optional(ListOf(Int(low=0), length=2).where(lambda w: w[0] <= w[1],
                                                              "[first, last] layer indices with first <= last")),
        "lambdas": ListOf(Number(), nonempty=True, distinct=True),
        "ratios": ListOf(Number(low=0), nonempty=True, distinct=True),
        "n_random": Int(low=0), "eval_prompts": Optional(Int(low=1)), "max_new_tokens": Int(low=1),
        "batch_size": Int(low=1), "seed": SEED}

    def validate(self) -> None:
        super().validate()
        self.check("window_max", self.window_max >= self.window_min, f"an int >= window_min ({self.window_min})")


@dataclass(frozen=True)
class LanguageNeuronsResult(Result):
    """``path``: ``"reference"`` when the run computed what PhotonTJ/NeuralFoxP2 computes, else ``"variant (...)"``
    naming the options that differ. ``stage1``: per layer the SAE fit and the candidate features (selectivity, lift,
    joint score, kept). ``neurons``: the language neurons per layer — SAE feature indices ranked by joint score (as
    ``str(layer)`` keys).
    ``stage2``: per layer the ΔZ singular values (first 24), erank, rank, top mass, stability and score.
    ``steering``: one row per steering configuration (method, λ, ratio, seed) with its measures; ``examples``:
    continuations of the first held-out prompts for the baseline and the best configuration of each method.

    Example: ``r: LanguageNeuronsResult = run_analysis(gemma, "language_neurons", LanguageNeuronsConfig(layers=[8, 9]))``"""

    kind = "language_neurons"
    title = "Language-neuron steering toward Spanish (Neural FOXP2): SAE features, steering subspace, sparse shifts"
    model: str
    path: str
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

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """One key per steering configuration (the table's rows differ by method, λ, β/λ and seed: settings, not
        measurements): the site is ``none`` (unsteered), ``sparse/λ=<λ>/ratio=<β/λ>``, ``dense/λ=<λ>`` or
        ``random/λ=<λ>/ratio=<β/λ>/seed=<seed>``; the metrics are the table's measures (Spanish fraction and score,
        margin M, ΔM, English ppl ratio, NLL after Spanish prompt, distinct tokens), a measure that was not taken
        (None) left out. No layer: a configuration steers every layer of the window. No steering, no metrics."""
        return [(name, None, _steering_site(r), float(r[key])) for r in self.steering
                for key, name in _MEASURES.items() if r.get(key) is not None]

    def summary(self) -> str:
        return f"[{self.path} path] {self.verdict}"


_MEASURES = {"spanish_fraction": "Spanish fraction", "spanish_score": "Spanish score", "margin": "margin M",
             "delta_margin": "ΔM", "ppl_ratio": "English ppl ratio", "es_context_nll": "NLL after Spanish prompt",
             "distinct": "distinct tokens"}


def _steering_site(row: dict) -> str:
    """A steering row's method and settings (see ``metrics``); β/λ is ``ratio`` there, since ``/`` joins the parts.
    The dense vector has no β, so no ratio."""
    if row["method"] == "none":
        return "none"
    parts = [row["method"], setting("λ", row["lam"])]
    parts += [setting("ratio", row["ratio"])] if row["method"] != "dense" else []
    parts += [setting("seed", row["seed"])] if row.get("seed") is not None else []
    return "/".join(parts)


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


def _token_sets(lm: LoadedModel, train, config) -> tuple[list[int], list[int]]:
    if config.token_sets == "unicode":
        return unicode_token_ids(lm.tokenizer)
    return language_token_ids(lm.tokenizer, train)


def compute(inputs: Inputs, config: LanguageNeuronsConfig) -> LanguageNeuronsResult:
    """The three stages: SAE features selective and causal for Spanish (I), the spectrum of their EN→ES shift and the
    layer window (II), and steering with it against dense and random baselines (III).

    Example: ``compute(inputs, LanguageNeuronsConfig(layers=[8, 9]))  # run_analysis(lm, "language_neurons") calls it``"""
    lm = inputs.model
    layers = _layers(config, lm.facts.n_layers)
    train, test = _pairs(config)
    en_ids, es_ids = _token_sets(lm, train, config)
    rows1, states = stage1(lm, train, layers, config, en_ids, es_ids, inputs.progress)
    neurons = {str(st.layer): st.neurons for st in states}
    rows2, window, steering_rows, examples = [], None, [], []
    if any(st.neurons for st in states):
        rows2 = stage2(states, config)
        window = _window(rows2, layers, config)
        if window is not None and any(st.neurons for st in states if window[0] <= st.layer <= window[1]):
            steering_rows, examples = stage3(lm, test, states, window, config, en_ids, es_ids, inputs.progress)
    return LanguageNeuronsResult(
        model=inputs.model_name, path=config.path(), layers=layers, n_train=len(train), n_test=len(test),
        n_en_tokens=len(en_ids), n_es_tokens=len(es_ids), stage1=rows1, neurons=neurons, stage2=rows2, window=window,
        steering=steering_rows, examples=examples,
        verdict=_verdict(layers, rows1, rows2, window, steering_rows))


def _verdict(layers, stage1, stage2, window, rows) -> str:
    sizes = ", ".join(f"L{s['layer']} {s['n_neurons']}" for s in stage1)
    if not any(s["n_neurons"] for s in stage1):
        l0 = ", ".join(f"{s['sae_l0']:.2g}" for s in stage1)
        fvu = f"{min(s['sae_fvu'] for s in stage1):.2g}–{max(s['sae_fvu'] for s in stage1):.2g}"
        return (f"No language neurons found in layers {layers[0]}–{layers[-1]}: no SAE feature had both positive "
                f"Spanish selectivity and a positive causal lift on the next-token margin, so stages II and III were "
                f"not run (features with positive selectivity per layer: "
                + ", ".join(str(s["n_positive_selectivity"]) for s in stage1)
                + f"; SAE L0 per layer: {l0}; FVU {fvu} — an SAE whose features never fire has no selectivity to "
                  f"find). Try more layers, more candidates (n_candidates), larger alphas, or a variant SAE "
                  f"(inputs='standardised', architecture='topk', a smaller l1_coefficient).")
    lifts = sorted(c["lift"] for s in stage1 for c in s["candidates"] if c["lift"] is not None)
    positive = sum(v > 0 for v in lifts)
    parts = [f"language neurons per layer: {sizes}",
             f"causal lifts of the candidates with positive selectivity: {positive} of {len(lifts)} positive, median "
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
        parts.append(f"random SAE-feature sets of the same size: at best {100 * rd['spanish_fraction']:.0f}% Spanish, "
                     f"ΔM {rd['delta_margin']:+.3f}")
    gain = sp["spanish_fraction"] - base["spanish_fraction"]
    beats_random = "random" not in tops or sp["spanish_fraction"] > tops["random"]["spanish_fraction"] + 0.05
    if gain < 0.1:
        parts.append("VERDICT: the sparse language-neuron shift did NOT make Spanish the default output here "
                     f"(+{100 * gain:.0f} points)")
    elif not beats_random:
        parts.append("VERDICT: steering moved the output language, but random SAE-feature sets of the same size did as "
                     "well — the effect is not specific to the selected language neurons")
    else:
        parts.append(f"VERDICT: the sparse shift on the language neurons raised Spanish continuations by "
                     f"{100 * gain:.0f} points, more than random SAE-feature sets of the same size")
    return "; ".join(parts) + "."


ANALYSIS = Analysis(
    name="language_neurons",
    description="Neural FOXP2: SAE language features, steering subspace and window, sparse shifts toward Spanish",
    config=LanguageNeuronsConfig, result=LanguageNeuronsResult, compute=compute, needs_model=True,
    in_default_report=False, default_model="gemma3-270m",
)
