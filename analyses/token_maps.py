"""Token activation maps (TAM) of a text model: which prompt tokens explain each generated token, with a measured
check of whether the maps point at the right input.

Reference: "Token Activation Map to Visually Explain Multimodal LLMs" (reference code xmed-lab/TAM; formulas in
:mod:`workbench.tam`). Two parts:

1. Examples: for each prompt, greedy generation and the raw / causal-inference / filtered map of every generated
   token over the prompt tokens (heat-map strips side by side) and a "which input explains this output" table.
2. Evaluation: copy/recall prompts whose answer token occurs once in the prompt (:mod:`workbench.tasks.recall`);
   only those the model answers correctly are kept (the count is reported). For each, the argmax of each map over
   the prompt tokens (BOS excluded) is compared with the answer's position: TAM raw, raw read at the position that
   predicted each token (j − 1, the alternative reading of text positions), after ECI, filtered; the gradient × input
   baseline from captum on the same prompts; and chance (1 / number of prompt tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from workbench.analysis import Analysis, Inputs
from workbench.attribution import gradient_x_input
from workbench.intervene.readout import greedy_from_ids, position_logits, right_padded
from workbench.models.chat import user_turn
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.results import PALETTE, Config, Result, table_figure
from workbench.tam.core import ECI_WEIGHTS, KERNEL_SIZE, interference, interfering_tokens
from workbench.tam.plots import shown
from workbench.tam.text import TextTokenMaps, first_prompt_position, maps_from_logits, sequence_logits, text_token_maps
from workbench.tasks.recall import FAMILIES, recall_prompts
from workbench.validation import SEED, Bool, Choice, Int, ListOf, Optional, Str, check_int

EXAMPLES = (
    "I need to buy milk, eggs and rice. The first thing I need to buy is",
    "The password is dragon. Do not forget the password. The password is",
    "When Mary and John went to the store, John gave a drink to",
)
METHODS = {
    "tam_raw": "TAM raw",
    "tam_raw_skip_first": "TAM raw, first prompt token excluded",
    "tam_raw_prev": "TAM raw, read at j−1",
    "tam_eci": "TAM after ECI",
    "tam_filtered": "TAM filtered",
    "grad_x_input": "gradient × input (captum)",
}


@dataclass(frozen=True)
class TokenMapsConfig(Config):
    """``prompts``: the example prompts mapped and shown (None: one per recall family). ``max_new_tokens``: greedy
    tokens generated per example. ``kernel_size``: width of the 1-D rank Gaussian filter (the reference's 3).
    ``eval_prompts``: copy/recall candidates drawn for the evaluation (0 skips it; ≈ 2/3 are answered correctly by
    SmolLM2, so 90 gives ≥ 50 kept). ``baseline``: also run gradient × input (one backward per prompt).
    ``chat_template``: lay each prompt out as a chat user turn (the reference's layout; the evaluation then explains
    the first generated token equal to the target, within ``max_new_tokens``) instead of plain text whose first
    generated token is the target. ``eci_weights``: ``"reference"`` (an earlier generated token weighted where it was
    generated; the explained token's own generating position never) or ``"own_position"`` (each earlier token at its
    own position — a deviation kept as an option; see :func:`workbench.tam.core.interfering_tokens`).

    Example: ``run_analysis(lm, "token_maps", TokenMapsConfig(prompts=["The capital of France is"], eval_prompts=0))``"""

    kind = "token_maps_config"
    prompts: list[str] | None = None
    max_new_tokens: int = 8
    kernel_size: int = 3
    eval_prompts: int = 90
    seed: int = 0
    baseline: bool = True
    batch_size: int = 32
    chat_template: bool = False
    eci_weights: str = "reference"

    constraints = {"prompts": Optional(ListOf(Str(nonempty=True), nonempty=True)), "max_new_tokens": Int(low=1),
                   "kernel_size": KERNEL_SIZE, "eval_prompts": Int(low=0), "seed": SEED, "baseline": Bool(),
                   "batch_size": Int(low=1), "chat_template": Bool(), "eci_weights": Choice(ECI_WEIGHTS)}


@dataclass(frozen=True)
class TokenMapsResult(Result):
    """``examples``: per prompt its tokens, the generated tokens and the three ``[G, P]`` maps (lists).
    ``evaluation``: candidates, answered-correctly counts per family, one row per kept prompt (target index and each
    method's argmax) and the hit counts; empty when the evaluation was skipped.

    Example: ``r = run_analysis(lm, "token_maps"); r.maps(0).top_inputs()``"""

    kind = "token_maps"
    title = "Token activation maps: which prompt tokens explain each generated token"
    model: str
    kernel_size: int
    examples: list[dict]
    evaluation: dict
    verdict: str
    chat_template: bool = False
    eci_weights: str = "reference"

    def maps(self, i: int) -> TextTokenMaps:
        """Example ``i`` as :class:`~workbench.tam.text.TextTokenMaps` (for its figure or ``top_inputs``).

        Example: ``r.maps(0).figure("first example")``"""
        check_int("TokenMapsResult.maps", "i", i, low=0, high=len(self.examples), high_open=True,
                  allowed=f"an example index in [0, {len(self.examples)})")
        e = self.examples[i]
        return TextTokenMaps(prompt_tokens=e["prompt_tokens"], generated_tokens=e["generated_tokens"],
                             **{s: torch.tensor(e[s], dtype=torch.float64) for s in ("raw", "eci", "filtered")})

    def plot(self) -> go.Figure:
        return self.maps(0).figure(f"Example 1: {self.examples[0]['prompt']!r}")

    def explain_table(self, i: int) -> go.Figure:
        """Table of example ``i``: per generated token, the prompt token each map (raw, ECI, filtered) scores highest
        and its share.

        Example: ``r.explain_table(0).show()``"""
        rows = [[f"{r['step']}: {shown(r['output'])}"] + [f"{shown(r[s]['token'])} ({100 * r[s]['share']:.0f}%)"
                                                           for s in ("raw", "eci", "filtered")]
                for r in self.maps(i).top_inputs()]
        return table_figure(f"Which input explains this output (example {i + 1}; top prompt token, its share of the "
                            f"map)", ["generated token", "raw", "after ECI", "filtered"], rows)

    def plot_evaluation(self) -> go.Figure:
        """Hit rate of each method (argmax on the target prompt token), over all kept prompts and per recall family.

        Example: ``r.plot_evaluation().show()``"""
        ev = self.evaluation
        fig = go.Figure()
        groups = ["all"] + [f for f in FAMILIES if ev["correct_by_family"].get(f)]
        for k, (key, label) in enumerate(METHODS.items()):
            if key not in ev["hits"]:
                continue
            rates = [_rate(ev, key, g) for g in groups]
            fig.add_trace(go.Bar(x=groups, y=rates, name=label, marker_color=PALETTE[k % len(PALETTE)],
                                 text=[f"{100 * r:.0f}%" for r in rates], textposition="outside"))
        chance = [_chance(ev, g) for g in groups]
        fig.add_trace(go.Scatter(x=groups, y=chance, mode="markers", name="chance (1/P)",
                                 marker={"symbol": "line-ew", "size": 70, "line": {"width": 3, "color": "black"}}))
        fig.update_layout(title=f"Does the map's argmax land on the recalled token? ({ev['n_correct']} prompts the "
                                f"model answers correctly, of {ev['n_candidates']})", barmode="group",
                          yaxis={"title": "argmax = answer's position", "range": [0, 1.1], "tickformat": ".0%"},
                          height=440)
        return fig

    def figures(self) -> list[go.Figure]:
        out: list[go.Figure] = []
        if self.evaluation:
            out.append(self.plot_evaluation())
        for i, e in enumerate(self.examples):
            out += [self.maps(i).figure(f"Example {i + 1}: {e['prompt']!r}"), self.explain_table(i)]
        return out

    def table(self):
        ev = self.evaluation
        if not ev:
            return [], []
        header = ["method", "hits", "prompts", "hit rate", "argmax on the first prompt token"]
        rows = [[label, ev["hits"][key], ev["n_correct"], _rate(ev, key, "all"), ev["first_token"][key]]
                for key, label in METHODS.items() if key in ev["hits"]]
        return header, rows + [["chance (mean 1/P)", "", ev["n_correct"], _chance(ev, "all"), ""]]

    def summary(self) -> str:
        return self.verdict


def _rows(ev: dict, family: str) -> list[dict]:
    return [r for r in ev["rows"] if family == "all" or r["family"] == family]


def _rate(ev: dict, key: str, family: str) -> float:
    rows = _rows(ev, family)
    return sum(r["argmax"][key] == r["target_index"] for r in rows) / len(rows) if rows else float("nan")


def _chance(ev: dict, family: str) -> float:
    rows = _rows(ev, family)
    return sum(1 / r["n_inputs"] for r in rows) / len(rows) if rows else float("nan")


# ---------------------------------------------------------------------------------------------------------------------


def _example(lm: LoadedModel, prompt: str, config: TokenMapsConfig) -> dict:
    maps = text_token_maps(lm, prompt, max_new_tokens=config.max_new_tokens, kernel_size=config.kernel_size,
                           chat_template=config.chat_template, eci_weights=config.eci_weights)
    return {"prompt": prompt, "prompt_tokens": maps.prompt_tokens, "generated_tokens": maps.generated_tokens,
            **{s: [[round(float(v), 6) for v in row] for row in maps.stage(s)] for s in ("raw", "eci", "filtered")}}


def score_prompt(lm: LoadedModel, ids: torch.Tensor, n_prompt: int, *, first: int | None = None, last: int | None = None,
                 kernel_size: int = 3, baseline: bool = True, eci_weights: str = "reference") -> dict:
    """Each method's ``[P]`` scores of the prompt's text tokens ``ids[first:last]`` (default: BOS excluded, up to
    ``n_prompt``) for the last token of ``ids`` (generated at position ``len(ids) − 2``; the tokens from
    ``n_prompt`` on are the generation, see :data:`METHODS`); ``-inf`` marks a position a method may not pick. Also
    ``"eci_parts"``: what ECI removed (the top interferer's weight share and token position, the interference map's
    argmax, the least-squares scale s* and the cosine of the raw and interference maps).

    Example: ``s = score_prompt(lm, ids, n_prompt, kernel_size=3)``"""
    first = first_prompt_position(lm, ids) if first is None else first
    last = n_prompt if last is None else last
    y = int(ids[-1])
    logits = sequence_logits(lm, ids)
    raw, eci, filtered = (m[-1] for m in maps_from_logits(logits, ids, n_prompt, first=first, last=last,
                                                          kernel_size=kernel_size, eci_weights=eci_weights))
    text_pos = torch.arange(first, last)
    prev = logits[text_pos - 1, y].clamp_min(0)
    if first == 0:
        prev[0] = 0.0  # no position predicted the first token
    skip_first = raw.clone()
    skip_first[0] = -torch.inf
    scores = {"tam_raw": raw, "tam_raw_skip_first": skip_first, "tam_raw_prev": prev, "tam_eci": eci,
              "tam_filtered": filtered}
    if baseline:
        scores["grad_x_input"] = gradient_x_input(lm, ids[:-1], y)[first:last]
    return scores | {"eci_parts": _eci_parts(logits, ids, n_prompt, text_pos, raw, eci_weights)}


def _eci_parts(logits, ids, n_prompt, text_pos, raw, eci_weights) -> dict:
    """What ECI did to this map: the top interferer's weight share and position, the interference map I (a tensor,
    reduced by the evaluation), the scale s*, cos(A, I), and cos(A, level) with level = each position's mean
    positive logit over the vocabulary (the part of every token's map that does not depend on the token)."""
    p, y = len(ids) - 1, int(ids[-1])
    earlier, weight_at = interfering_tokens(text_pos, n_prompt, p, eci_weights)
    keep = ids[earlier] != y
    w, inter, scale = interference(raw, logits[text_pos][:, ids[earlier]].T.clamp_min(0),
                                   logits[weight_at, y].clamp_min(0), keep)
    level = logits[text_pos].clamp_min(0).mean(-1)
    top = int(w.argmax()) if len(w) else -1
    return {"top_share": float(w[top]) if len(w) else 0.0,
            "top_position": int(earlier[keep][top]) - int(text_pos[0]) if len(w) else -1,
            "interference": inter, "scale": scale, "cosine": _cos(raw, inter), "cosine_level": _cos(raw, level)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else 0.0


def _eci_row(parts: dict, raw: torch.Tensor, target: int) -> dict:
    """The per-prompt ECI record: ``parts`` without the map, plus the share of the raw map's value at the target
    that survives ECI (relu(A_t − s*·I_t)/A_t)."""
    inter = parts.pop("interference")
    a_t = float(raw[target])
    kept = max(a_t - parts["scale"] * float(inter[target]), 0.0) / a_t if a_t > 0 else 0.0
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in parts.items()} | {"target_kept": round(kept, 4)}


def _kept(lm: LoadedModel, cands, config: TokenMapsConfig, progress: bool):
    """``(candidate, ids, n_prompt, first, last)`` for each prompt the model answers with its target, ``ids``
    ending at the target token: plain text — the first generated token (one batched readout); chat layout — the
    first generated token equal to the target within ``max_new_tokens`` (and the target once in the user's text)."""
    tok = lm.tokenizer
    targets = [tok(c.target, add_special_tokens=False)["input_ids"][0] for c in cands]
    if not config.chat_template:
        tokens, last = right_padded(lm, [c.prompt for c in cands])
        answers = position_logits(lm, tokens, last, batch_size=config.batch_size).argmax(-1).tolist()
        for c, a, y in zip(cands, answers, targets):
            if a == y:
                ids = lm.model.to_tokens(c.prompt)[0].cpu()
                yield c, torch.cat([ids, torch.tensor([y])]), len(ids), first_prompt_position(lm, ids), len(ids)
        return
    for c, y in progress_bar(list(zip(cands, targets)), desc="token_maps answers", disable=not progress, leave=False):
        ids, first, last = user_turn(lm, c.prompt)
        generated = greedy_from_ids(lm, ids, max_new_tokens=config.max_new_tokens)
        hits = (generated == y).nonzero().flatten()
        if len(hits) and int((ids[first:last] == y).sum()) == 1:
            yield c, torch.cat([ids, generated[:int(hits[0]) + 1]]), len(ids), first, last


def _evaluate(lm: LoadedModel, config: TokenMapsConfig, progress: bool) -> dict:
    cands = recall_prompts(lm.tokenizer, config.eval_prompts, seed=config.seed)
    rows, correct = [], {f: 0 for f in FAMILIES}
    for c, ids, n_prompt, first, last in progress_bar(list(_kept(lm, cands, config, progress)),
                                                      desc="token_maps evaluation", disable=not progress, leave=False):
        correct[c.family] += 1
        scores = score_prompt(lm, ids, n_prompt, first=first, last=last, kernel_size=config.kernel_size,
                              baseline=config.baseline, eci_weights=config.eci_weights)
        target_index = int((ids[first:last] == ids[-1]).nonzero()[0])
        parts = _eci_row(scores.pop("eci_parts"), scores["tam_raw"], target_index)
        rows.append({"family": c.family, "prompt": c.prompt, "target": c.target, "target_index": target_index,
                     "step": len(ids) - 1 - n_prompt, "n_inputs": last - first, "eci": parts,
                     "argmax": {k: int(v.argmax()) for k, v in scores.items()}})
    hits = {k: sum(r["argmax"][k] == r["target_index"] for r in rows) for k in (rows[0]["argmax"] if rows else {})}
    first_token = {k: sum(r["argmax"][k] == 0 for r in rows) for k in hits}
    return {"n_candidates": len(cands), "n_correct": len(rows), "correct_by_family": correct,
            "candidates_by_family": {f: sum(c.family == f for c in cands) for f in FAMILIES}, "rows": rows,
            "hits": hits, "first_token": first_token}


def _path(config: TokenMapsConfig) -> str:
    layout = "chat-template user turn" if config.chat_template else "plain text (no chat template)"
    weights = ("reference ECI weights (xmed-lab/TAM: earlier generated tokens weighted where they were generated)"
               if config.eci_weights == "reference" else "own-position ECI weights (a deviation from the reference)")
    return f"Path: {layout}, {weights}."


def _verdict(ev: dict, config: TokenMapsConfig) -> str:
    return _path(config) + " " + _findings(ev)


def _findings(ev: dict) -> str:
    if not ev:
        return "Evaluation skipped (eval_prompts = 0): the maps above are not checked against a known answer."
    n = ev["n_correct"]
    if n == 0:
        return (f"The model answered none of the {ev['n_candidates']} copy/recall prompts correctly, so whether the "
                f"maps point at the recalled token cannot be checked on this model.")
    pct = {k: 100 * _rate(ev, k, "all") for k in ev["hits"]}
    chance = 100 * _chance(ev, "all")
    parts = [f"On {n} copy/recall prompts the model answers correctly (of {ev['n_candidates']}), the argmax of the raw "
             f"map lands on the recalled token in {pct['tam_raw']:.0f}% (chance {chance:.0f}%)"]
    parts.append(f"after ECI {pct['tam_eci']:.0f}%, filtered {pct['tam_filtered']:.0f}%")
    if "grad_x_input" in pct:
        parts.append(f"gradient × input {pct['grad_x_input']:.0f}%")
    parts.append(f"reading each token at the position that predicted it (j−1) {pct['tam_raw_prev']:.0f}%; the raw "
                 f"argmax is the first prompt token (attention sink) in {ev['first_token']['tam_raw']} prompts, and "
                 f"excluding that token gives {pct['tam_raw_skip_first']:.0f}%")
    text = "; ".join(parts) + "."
    if pct["tam_raw"] > 2 * chance:
        text += " The raw map localises the recalled token well above chance"
        text += (" and better than gradient × input." if pct["tam_raw"] > pct.get("grad_x_input", 0)
                 else ", but not better than gradient × input.")
    else:
        text += " The raw map does NOT localise the recalled token clearly above chance."
    if pct["tam_eci"] < pct["tam_raw"]:
        d = eci_summary(ev)
        text += (f" Estimated causal inference LOWERS the hit rate ({pct['tam_eci']:.0f}%). Measured why: the "
                 f"interference map I (the earlier tokens' own maps, weighted) is nearly collinear with the raw map "
                 f"(median cosine {d['cosine']:.2f}; the raw map's cosine with each position's mean positive logit "
                 f"over the vocabulary — a level every token's map shares — is {d['cosine_level']:.2f}) and the "
                 f"least-squares scale is ≈ 1 (median {d['scale']:.2f}), so the subtraction keeps a median "
                 f"{100 * d['target_kept']:.0f}% of the target's raw score, and the ECI argmax falls on one of the "
                 f"last three prompt tokens in {d['late']} of {n} prompts. The weighting is not the cause: no interferer dominates (median top weight share "
                 f"{d['top_share']:.2f}).")
    if n < 50:
        text += f" Only {n} prompts were kept (< 50): treat the rates as rough."
    return text


def eci_summary(ev: dict) -> dict:
    """Medians over the kept prompts of the ECI record (:func:`_eci_row`) and ``late``: how many ECI argmaxes fall
    on the last three prompt tokens.

    Example: ``eci_summary(r.evaluation)["late"]``"""
    from statistics import median

    rows = ev["rows"]
    out = {k: median(r["eci"][k] for r in rows) for k in ("cosine", "cosine_level", "scale", "target_kept",
                                                          "top_share")}
    return out | {"late": sum(r["n_inputs"] - 1 - r["argmax"]["tam_eci"] < 3 for r in rows)}


def compute(inputs: Inputs, config: TokenMapsConfig) -> TokenMapsResult:
    """Token activation maps of the example prompts' greedy generations, and (unless ``eval_prompts`` is 0) the
    copy/recall evaluation of which map points at the right prompt token.

    Example: ``compute(inputs, TokenMapsConfig(eval_prompts=0))  # what run_analysis(lm, "token_maps") calls``"""
    lm = inputs.model
    prompts = list(EXAMPLES) if config.prompts is None else list(config.prompts)
    examples = [_example(lm, p, config) for p in progress_bar(prompts, desc="token_maps examples",
                                                      disable=not inputs.progress, leave=False)]
    evaluation = _evaluate(lm, config, inputs.progress) if config.eval_prompts else {}
    return TokenMapsResult(model=inputs.model_name, kernel_size=config.kernel_size, examples=examples,
                           evaluation=evaluation, verdict=_verdict(evaluation, config),
                           chat_template=config.chat_template, eci_weights=config.eci_weights)


ANALYSIS = Analysis(
    name="token_maps",
    description="Token activation maps (TAM): which prompt tokens explain each generated token, checked on "
                "copy/recall prompts against gradient × input",
    config=TokenMapsConfig, result=TokenMapsResult, compute=compute, needs_model=True, in_default_report=False,
)
