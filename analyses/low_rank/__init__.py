"""How low-rank is each layer on real text? Activation-aware compressibility of every linear map, predicted from
spectra and verified by truncating the real model.

For each linear map W (TransformerLens ``x @ W`` orientation, heads concatenated as in ``weight_spectra``) and the
second moment C = E[x xᵀ] of its inputs over calibration text (streamed by capture, exact float64), the output error
of a rank-r replacement is ‖C^{1/2}(W − W_r)‖_F, reported relative to ‖C^{1/2}W‖_F, for every r at once from spectra
(:mod:`workbench.spectra.low_rank`): (a) plain truncation of W's SVD, the baseline; (b) whitened truncation — the SVD
of C^{1/2}W truncated and mapped back (SVD-LLM's truncation-aware whitening, EoRA's eigenspace projection), optimal
for this error. Per matrix: the rank each method needs for each error budget and the parameter fraction it costs;
for the whole model: parameter fraction against a uniform error budget.

Verification: at each ``verify_budgets`` ε, every matrix is replaced by its whitened truncation at the rank that
budget allows, and — as the comparison at equal size — by its plain truncation with the ranks plain truncation
chooses for the budget that gives the same total parameter count; perplexity and top-1 agreement with the unmodified
model are measured on held-out prompts (not the calibration ones). The replacements go through the same revertible
handle as Steer2Edit's edits (bit-exact revert).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from workbench.analysis import Analysis, Inputs
from workbench.capture import capture
from workbench.errors import config_error
from workbench.models.adapters import LAYER_KINDS, as_matrix
from workbench.prompts import categories, default_prompts, read_prompts
from workbench.results import Config
from workbench.spectra.low_rank import second_moment, truncation_errors, whitening_factor
from workbench.validation import SEED, Choice, Int, ListOf, Number, Optional, Str

from .result import LowRankResult
from .sites import input_site
from .verify import verify

BUDGET = Number(low=0, high=1, low_open=True, high_open=True)


@dataclass(frozen=True)
class LowRankConfig(Config):
    """``prompts``: ``"bundled"``, ``"bundled:<category>"`` or a .txt/.jsonl file; split into calibration (C is
    measured there) and held-out texts (``heldout_fraction`` of them, every k-th text after a seeded shuffle, for the
    perplexity check). ``kinds``: matrices analysed (W_gate is skipped on non-gated MLPs). ``budgets``: relative
    output errors for the rank table; ``map_budget`` (one of them) for the heat-map. ``verify_budgets``: budgets at
    which the real model is truncated and measured (empty: no verification). ``max_tokens``: calibration tokens
    (default 8192: C of a 1536-wide MLP input then rests on 5x as many tokens as dimensions; the float64 co-moments of
    120 sites cost more than the forward, so this bounds the run; None takes every calibration token). ``curve_layers``: layers whose
    error-vs-rank curves are kept (default: first, middle, last). ``floor``: eigenvalue floor of C relative to its
    largest, raised to it before the whitened factors are chosen (0: the exact optimum on C, 1: plain truncation; see
    :func:`workbench.spectra.low_rank.truncate`).

    Example: ``run_analysis(lm, "low_rank", LowRankConfig(verify_budgets=[0.1], max_tokens=4000))``"""

    kind = "low_rank_config"
    prompts: str = "bundled"
    heldout_fraction: float = 0.25
    split_seed: int = 0
    kinds: list[str] = field(default_factory=lambda: list(LAYER_KINDS))
    budgets: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1])
    map_budget: float = 0.05
    verify_budgets: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    curve_layers: list[int] | None = None
    max_length: int = 128
    max_tokens: int | None = 8192
    heldout_texts: int | None = 64
    batch_size: int = 8
    floor: float = 0.0

    constraints = {
        "prompts": Str(nonempty=True).where(
            lambda s: s == "bundled" or (s.startswith("bundled:") and s[8:] in categories()) or s.endswith(
                (".txt", ".jsonl")), '"bundled", "bundled:<category>" or a .txt/.jsonl path'),
        "heldout_fraction": Number(low=0, high=0.9, low_open=True),
        "split_seed": SEED,
        "kinds": ListOf(Choice(LAYER_KINDS), nonempty=True, distinct=True),
        "budgets": ListOf(BUDGET, nonempty=True, distinct=True),
        "map_budget": BUDGET,
        "verify_budgets": ListOf(BUDGET, distinct=True),
        "curve_layers": Optional(ListOf(Int(low=0), nonempty=True, distinct=True)),
        "max_length": Int(low=2),
        "max_tokens": Optional(Int(low=2)),
        "heldout_texts": Optional(Int(low=1)),
        "batch_size": Int(low=1),
        "floor": Number(low=0, high=1),
    }

    def validate(self) -> None:
        super().validate()
        self.check("map_budget", self.map_budget in self.budgets, f"one of budgets {self.budgets}")


def split_prompts(texts: list[str], heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(calibration, held_out)``: a seeded shuffle, then every ``round(1/heldout_fraction)``-th text held out (so each
    bundled category contributes to both), at least one text in each.

    Example: ``calibration, held_out = split_prompts(default_prompts(), 0.25, seed=0)``"""
    if len(texts) < 2:
        raise config_error("low_rank", "prompts", "at least 2 texts (calibration and held-out)", f"{len(texts)} text")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    step = max(2, round(1 / heldout_fraction))
    held = sorted(order[i] for i in range(0, len(order), step))
    kept = sorted(set(range(len(texts))) - set(held))
    return [texts[i] for i in kept], [texts[i] for i in held]


def _texts(source: str) -> list[str]:
    if source == "bundled":
        return default_prompts()
    if source.startswith("bundled:"):
        return default_prompts(source.removeprefix("bundled:"))
    return read_prompts(source)


def _matrices(lm, config: LowRankConfig) -> list[tuple[str, int]]:
    kinds = [k for k in config.kinds if k != "W_gate" or lm.facts.gated_mlp]
    return [(kind, layer) for layer in range(lm.n_layers) for kind in kinds]


def _spectra(lm, matrices, sites, cap) -> tuple[dict, dict, dict]:
    """Per matrix: both methods' relative error curves, the numerical rank of C and the shape. The whitening factor
    F (FᵀF = C, one ``eigh``) is computed once per site, batched per width, and shared by the matrices reading it;
    the errors are batched per shape. Also returns the float64 matrices and, per site, ``(C, F)`` for the
    verification."""
    whitening = _whitening(cap, sorted(set(sites.values())))
    weights = {m: as_matrix(m[0], lm.weight(*m)).detach().to(torch.float64) for m in matrices}
    by_shape: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for m in matrices:
        by_shape.setdefault(tuple(weights[m].shape), []).append(m)
    out = {}
    for group in by_shape.values():
        w = torch.stack([weights[m] for m in group])
        c = torch.stack([whitening[sites[m]][0] for m in group])
        f = torch.stack([whitening[sites[m]][1] for m in group])
        errors = truncation_errors(w, c, factor=f)
        c_rank = (f.abs().sum(-1) > 0).sum(-1)  # F's zero rows: directions C never excites
        for i, m in enumerate(group):
            out[m] = {"plain": errors.plain[i].cpu(), "whitened": errors.whitened[i].cpu(),
                      "c_rank": int(c_rank[i]), "shape": tuple(w.shape[1:])}
    return out, weights, whitening


def _whitening(cap, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``site -> (C, F)``: the uncentred second moment of each site and its whitening factor, one batched ``eigh``
    per site width."""
    moments = {s: second_moment(cap[s].mean.double(), cap[s].comoment.double(), cap[s].n) for s in names}
    out = {}
    by_width: dict[int, list[str]] = {}
    for s in names:
        by_width.setdefault(moments[s].shape[-1], []).append(s)
    for group in by_width.values():
        factors = whitening_factor(torch.stack([moments[s] for s in group]))
        out |= {s: (moments[s], factors[i]) for i, s in enumerate(group)}
    return out


def compute(inputs: Inputs, config: LowRankConfig) -> LowRankResult:
    """Capture the inputs of every linear map over the calibration prompts, predict both truncations' output errors
    for every rank from spectra, then (``verify_budgets``) truncate the real model and measure held-out perplexity.

    Example: ``compute(inputs, LowRankConfig())  # what run_analysis(lm, "low_rank") calls``"""
    lm = inputs.model
    started = time.perf_counter()
    texts = _texts(config.prompts)
    calibration, held_out = split_prompts(texts, config.heldout_fraction, config.split_seed)
    if config.heldout_texts is not None:
        held_out = held_out[:config.heldout_texts]
    matrices = _matrices(lm, config)
    hooks = lm.hook_points()
    sites = {m: input_site(hooks, *m) for m in matrices}
    cap = capture(lm, calibration, sites=sorted(set(sites.values())), max_length=config.max_length,
                  max_tokens=config.max_tokens, batch_size=config.batch_size, gram_dtype="float64",
                  progress=inputs.progress)
    captured = time.perf_counter()
    spectra, weights, whitening = _spectra(lm, matrices, sites, cap)
    analysed = time.perf_counter()
    checks = verify(lm, matrices, spectra, weights, whitening, sites, held_out, config, inputs.progress)
    layers = config.curve_layers or sorted({0, lm.n_layers // 2, lm.n_layers - 1})
    return LowRankResult.build(
        model=inputs.model_name, matrices=matrices, spectra=spectra, config=config, curve_layers=layers,
        calibration=(len(calibration), cap.n_tokens), held_out=len(held_out), verification=checks,
        seconds={"capture": round(captured - started, 2), "spectra": round(analysed - captured, 2),
                 "verification": round(time.perf_counter() - analysed, 2)})


ANALYSIS = Analysis(
    name="low_rank",
    description="Activation-aware compressibility of every linear map: plain vs whitened truncation error for every "
                "rank, ranks per error budget, verified by truncating the model (held-out perplexity)",
    config=LowRankConfig, result=LowRankResult, compute=compute, needs_model=True, in_default_report=False,
)
