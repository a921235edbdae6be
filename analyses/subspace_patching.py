"""Activation patching, 1-D DAS subspaces and their interpretability-illusion diagnostics on an IOI task.

Makelov, Lange & Nanda, "Is This the Subspace You Are Looking for? An Interpretability Illusion for Subspace
Activation Patching" (ICLR 2024), on the IOI *position* feature: base prompts "When Mary and John went to the store,
John gave a drink to" (ABB; answer Mary) and sources with the first two names swapped (BAB), so a patch that
transplants "where the subject sits" makes the base say the subject (John) instead. Steps: (1) check the model does
the task (logit difference and accuracy per template), (2) whole-site patching of the residual stream by layer and
position (a heatmap of FLDD), (3) DAS 1-D at the residual stream and at the MLP hidden layer (post-nonlinearity) of
one layer at the last position, trained as the reference notebook ran it (lr 0.01 → 0.001, all 30 epochs, batch 20,
the final rotation), (4) the illusion diagnostics of each learned direction on held-out pairs
(:mod:`workbench.intervene.illusion`), with a verdict in words.

Split (``split="paper"``, the default): DAS trains on pairs drawn from the first half of the names, places, objects
and templates and is evaluated on pairs from the other halves (reference data_utils.py), so held-out numbers are out
of distribution; ``split="random"`` (an option) holds out a random part of one pool (in distribution, optimistic).
Metrics (:mod:`workbench.intervene.metrics`): FLDD, interchange accuracy (whole-vocabulary argmax = the subject),
the "LD < 0" sign rate, and the fraction recovered relative to the whole-site residual patch at the DAS layer.
The likely-illusion flags use this project's heuristic thresholds; the paper's criteria are qualitative.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.capture.hooks import site
from workbench.errors import config_error
from workbench.intervene import record
from workbench.intervene.das import train_das
from workbench.intervene.generation import hf_causal_lm
from workbench.intervene.illusion import diagnose
from workbench.intervene.metrics import fldd, logit_diff
from workbench.intervene.patch import Prefix, cached_prefix, last_logits
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.results import Config, Result
from workbench.tasks.ioi import TEMPLATES, ioi_pairs
from workbench.validation import SEED, Choice, Int, Number, Optional

EFFECTS = ("v", "v_row", "v_null", "whole site")
SPLITS = ("paper", "random")


@dataclass(frozen=True)
class SubspacePatchingConfig(Config):
    """``n_pairs``: IOI pairs (both directions ABB→BAB and BAB→ABB); ``test_fraction`` of them are held out for the
    diagnostics. ``layer``: the residual-stream (``hook_resid_post``) and MLP (``mlp.hook_post``) layer for DAS
    (None: the layer just before the earliest of the name-mover-like reader heads found in the second half of the
    model, as the paper's layer 8 precedes GPT-2's name movers in layers 9-10). ``heatmap_pairs``: pairs of one template for the
    layer × position heatmap. ``n_reader_heads``: how many later heads (those attending most from the last position
    to the indirect object: name-mover-like) define the residual stream's readers (their W_Q, RMSNorm scale folded
    in), as the paper used the name movers' W_Q. DAS: ``epochs``, ``lr``, ``batch_size`` as the paper's notebook;
    ``patience`` > 0 early-stops (an option; 0 = all epochs, the final rotation). ``split``: ``"paper"`` (disjoint
    halves of names/places/objects/templates for train and test) or ``"random"`` (a random held-out part of one
    pool); ``test_fraction`` of the ``n_pairs`` are test pairs either way.

    Example: ``run_analysis(lm, "subspace_patching", SubspacePatchingConfig(n_pairs=64, epochs=2))``"""

    kind = "subspace_patching_config"
    n_pairs: int = 96
    test_fraction: float = 0.3
    layer: int | None = None
    heatmap_pairs: int = 8
    heatmap_template: int = 0
    n_reader_heads: int = 3
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 20
    patience: int = 0
    split: str = "paper"
    seed: int = 0

    constraints = {
        "n_pairs": Int(low=4), "test_fraction": Number(low=0, high=1, low_open=True, high_open=True),
        "layer": Optional(Int(low=0)), "heatmap_pairs": Int(low=1),
        "heatmap_template": Int(low=0, high=len(TEMPLATES), high_open=True), "n_reader_heads": Int(low=1),
        "epochs": Int(low=1), "lr": Number(low=0, low_open=True), "batch_size": Int(low=1), "patience": Int(low=0),
        "split": Choice(SPLITS), "seed": SEED}


@dataclass(frozen=True)
class SubspacePatchingResult(Result):
    """``templates``: per-template task numbers. ``heatmap``: FLDD of whole-site resid patches [layer][position].
    ``das``: one dict per DAS site (site, layer, losses, effects by patch kind, diagnostics, verdict, reasons).

    Example: ``r = run_analysis(lm, "subspace_patching"); r.plot_effects().show()``"""

    kind = "subspace_patching"
    title = "Activation patching, DAS and the interpretability illusion (IOI position feature)"
    model: str
    n_pairs: int
    n_test: int
    task_logit_diff: float
    task_accuracy: float
    templates: list[int]
    template_logit_diff: list[float]
    template_accuracy: list[float]
    heatmap_layers: list[int]
    heatmap_tokens: list[str]
    heatmap: list[list[float]]
    das: list[dict]
    verdict: str
    split: str = "paper"
    n_train: int = 0

    def plot(self) -> go.Figure:
        fig = go.Figure(go.Heatmap(z=self.heatmap, y=self.heatmap_layers, x=list(range(len(self.heatmap_tokens))),
                                   colorscale="RdBu_r", zmid=0, colorbar={"title": "FLDD"},
                                   hovertemplate="layer %{y}, position %{x}: FLDD %{z:.2f}<extra></extra>"))
        fig.update_xaxes(tickvals=list(range(len(self.heatmap_tokens))), ticktext=self.heatmap_tokens)
        fig.update_layout(title="Whole-site patching of the residual stream (hook_resid_pre) by layer and position: "
                                "fractional logit-difference decrease", yaxis_title="layer", height=520)
        return fig

    def plot_effects(self) -> go.Figure:
        """Held-out FLDD of patching along the DAS direction, its row-space and null-space parts, and the whole site,
        per DAS site.

        Example: ``r.plot_effects().show()``"""
        fig = go.Figure()
        for entry in self.das:
            fig.add_trace(go.Bar(x=list(EFFECTS), y=[entry["effects"][k]["fldd"] for k in EFFECTS],
                                 name=f"{entry['site']} (pos {entry['position']})"))
        fig.update_layout(title="Held-out FLDD of patching along the DAS direction v, its row-space and null-space "
                                "parts, and the whole site", yaxis_title="FLDD (1 = indifferent, >1 = flipped)",
                          barmode="group", height=420)
        return fig

    def plot_training(self) -> go.Figure:
        """DAS train and validation loss per epoch, per site.

        Example: ``r.plot_training().show()``"""
        fig = go.Figure()
        for entry in self.das:
            for key, dash in (("train_loss", "solid"), ("val_loss", "dot")):
                fig.add_trace(go.Scatter(y=entry[key], mode="lines", line={"dash": dash},
                                         name=f"{entry['site']} {key.split('_')[0]}"))
        fig.update_layout(title="DAS training (cross-entropy toward the counterfactual name)", xaxis_title="epoch",
                          yaxis_title="loss", height=380)
        return fig

    def plot_task(self) -> go.Figure:
        """The IOI task per template: logit difference IO − S and accuracy.

        Example: ``r.plot_task().show()``"""
        fig = make_subplots(rows=1, cols=2, subplot_titles=("logit difference IO − S", "accuracy"))
        fig.add_trace(go.Bar(x=self.templates, y=self.template_logit_diff, showlegend=False), row=1, col=1)
        fig.add_trace(go.Bar(x=self.templates, y=self.template_accuracy, showlegend=False), row=1, col=2)
        fig.update_xaxes(title_text="template")
        fig.update_layout(title="Does the model do IOI? (base prompts, last position)", height=360)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot_task(), self.plot(), self.plot_effects(), self.plot_training()]

    def table(self):
        header = ["site", "patch", "FLDD", "interchange accuracy", "LD < 0 rate", "fraction recovered",
                  "LD patched", "LD base"]
        rows = [[e["site"], k, e["effects"][k]["fldd"], e["effects"][k]["interchange_accuracy"],
                 e["effects"][k]["sign_rate"], e["effects"][k]["recovered"], e["effects"][k]["ld_patched"],
                 e["effects"][k]["ld_base"]] for e in self.das for k in EFFECTS]
        return header, rows

    def summary(self) -> str:
        return self.verdict


def _same_length(lm: LoadedModel, pairs, n: int) -> list:
    """The first ``n`` pairs of the largest group of equal token length (places and objects vary in length): every
    batch must end at the same position, which is where the answer is read and the patch applied."""
    groups: dict[int, list] = {}
    for p in pairs:
        groups.setdefault(len(lm.tokenizer(p.base, add_special_tokens=False)["input_ids"]), []).append(p)
    return max(groups.values(), key=len)[:n]


def _token_ids(lm: LoadedModel, pairs) -> dict[str, torch.Tensor]:
    base = lm.model.to_tokens([p.base for p in pairs]).to(lm.device)
    source = lm.model.to_tokens([p.source for p in pairs]).to(lm.device)
    if base.shape != source.shape:
        raise config_error("subspace_patching", "pairs", "base and source prompts of equal token length",
                           f"{tuple(base.shape)} vs {tuple(source.shape)}")
    one = lambda text: lm.tokenizer(text, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    return {"base": base, "source": source,
            "answer": torch.tensor([one(p.answer) for p in pairs], device=lm.device),
            "cf": torch.tensor([one(p.counterfactual) for p in pairs], device=lm.device),
            "feature": torch.tensor([float(p.variant.startswith("ABB")) for p in pairs])}


def _ld(lm: LoadedModel, tokens, answer, alt, batch=32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([logit_diff(last_logits(lm, tokens[i]), answer[i], alt[i])
                          for i in torch.arange(tokens.shape[0]).split(batch)])


_HEATMAP_ROWS = 128  # patched prompts per forward of the heat map, at most
_HEATMAP_GROUP = 4  # consecutive positions per forward: each recomputes from the group's first position on


def _heatmap(lm: LoadedModel, data, progress) -> list[list[float]]:
    """FLDD of patching the source's whole ``hook_resid_pre`` into the base run, per (layer, position).

    A patch at ``hook_resid_pre`` of layer L, position p changes nothing before block L nor at positions before p, so
    each patched forward (:func:`~workbench.intervene.patch.last_logits`) starts at block L from the base run's
    recorded residual with row p taken from the source, reuses the base run's keys and values before the first
    position of its group of positions (a :class:`~workbench.intervene.patch.Prefix`), computes the rest of the
    rows only, and unembeds only the last position; a group of consecutive positions goes through as one batch. The
    same numbers as patching a full forward (tested)."""
    n_layers, n_pos = lm.facts.n_layers, data["base"].shape[1]
    base, n = data["base"], data["base"].shape[0]
    ld_base = _ld(lm, base, data["answer"], data["cf"])
    differs = (base != data["source"]).any(0).nonzero()
    first_diff = int(differs[0]) if differs.numel() else n_pos
    names = [site("resid_pre", layer) for layer in range(n_layers)]
    source_acts = record(lm, data["source"], names)  # every layer's residual from one forward each
    base_acts = record(lm, base, names)
    positions = list(range(first_diff, n_pos))  # identical prefix tokens: identical activations, the patch is a no-op
    size = max(1, min(_HEATMAP_GROUP, _HEATMAP_ROWS // n))
    groups = [positions[i:i + size] for i in range(0, len(positions), size)]
    cached = hf_causal_lm(lm) is not None
    prefixes = {g[0]: cached_prefix(lm, base, g[0]) if cached and g[0] > 0 else None for g in groups}
    rows = []
    for layer in progress_bar(range(n_layers), desc="patching heatmap", disable=not progress, leave=False):
        row = [0.0] * n_pos
        for group in groups:
            c, m = group[0], len(group)
            resid = base_acts[names[layer]].repeat(m, 1, 1)  # block k of n prompts: patched at group[k]
            for k, pos in enumerate(group):
                resid[k * n:(k + 1) * n, pos] = source_acts[names[layer]][:, pos]
            entries = prefixes[c]
            start = (layer, resid) if entries is None else Prefix(
                layer=layer, resid=resid[:, c:], entries=tuple((_repeat(k, m), _repeat(v, m)) for k, v in entries))
            with torch.no_grad():
                logits = last_logits(lm, base.repeat(m, 1), start=start)
            ld = logit_diff(logits, data["answer"].repeat(m), data["cf"].repeat(m))
            for k, pos in enumerate(group):
                row[pos] = fldd(ld_base, ld[k * n:(k + 1) * n])
        rows.append(row)
    return rows


def _repeat(t: torch.Tensor | None, m: int) -> torch.Tensor | None:
    return None if t is None else t.repeat(m, *([1] * (t.ndim - 1)))


def _reader_heads(lm: LoadedModel, data, layer: int, n_heads: int) -> list[tuple[int, int]]:
    """Heads after ``layer`` attending most from the last position to the answer (IO) vs the subject (S)."""
    base = data["base"][:32]
    io_pos = (base == data["answer"][:32, None]).float()
    s_pos = (base == data["cf"][:32, None]).float()
    later = list(range(layer + 1, lm.facts.n_layers))
    acts = record(lm, base, [site("pattern", l) for l in later])
    scores = []
    for l in later:
        pattern = acts[site("pattern", l)][:, :, -1]  # [B, H, K] from the last query position
        io = (pattern * io_pos[:, None]).sum(-1)
        s = (pattern * s_pos[:, None]).sum(-1) / s_pos.sum(-1)[:, None].clamp_min(1)  # mean over S1 and S2
        scores += [(float((io - s)[:, h].mean()), l, h) for h in range(pattern.shape[1])]
    return [(l, h) for _, l, h in sorted(scores, reverse=True)[:n_heads]]


def _norm_scale(lm: LoadedModel, layer: int) -> torch.Tensor:
    """The RMSNorm gain before the attention of ``layer`` (Gemma stores it as an offset from 1)."""
    ln = lm.model.blocks[layer].ln1
    weight = getattr(ln, "weight", None)
    if weight is None:
        weight = ln._original_component.weight  # TransformerBridge wraps the HF RMSNorm
    offset = 1.0 if getattr(lm.model.cfg, "rmsnorm_uses_offset", False) else 0.0
    return weight.detach() + offset


def _readers(lm: LoadedModel, site_kind: str, layer: int, heads: list[tuple[int, int]]) -> tuple[torch.Tensor, str]:
    if site_kind == "mlp":
        return lm.weight("W_out", layer).detach(), f"W_out of layer {layer} (the MLP hidden layer's only reader)"
    cols = [_norm_scale(lm, l)[:, None] * lm.weight("W_Q", l)[h].detach() for l, h in heads]
    names = ", ".join(f"L{l}H{h}" for l, h in heads)
    return torch.cat(cols, dim=1), f"W_Q of heads {names} (RMSNorm scale folded in)"


def compute(inputs: Inputs, config: SubspacePatchingConfig) -> SubspacePatchingResult:
    """IOI pairs, a whole-site patching heatmap, then DAS at the residual stream and MLP before the reader heads, with
    the interpretability-illusion diagnostics of the learnt direction.

    Example: ``compute(inputs, SubspacePatchingConfig(n_pairs=64))  # what run_analysis(lm, "subspace_patching") calls``"""
    lm = inputs.model
    n_layers = lm.facts.n_layers
    if config.layer is not None and not 0 <= config.layer < n_layers - 1:  # readers are heads of later layers
        raise config_error("subspace_patching", "layer", f"an int in [0, {n_layers - 1}) (a layer with later layers)",
                           config.layer)
    train_pairs, test_pairs = _pairs(lm, config)
    pairs = train_pairs + test_pairs
    sets = {"train": _token_ids(lm, train_pairs), "test": _token_ids(lm, test_pairs)}
    lds = {k: _ld(lm, d["base"], d["answer"], d["cf"]) for k, d in sets.items()}
    ld = torch.cat([lds["train"], lds["test"]])
    templates = sorted({p.template for p in pairs})
    per_t = {t: [i for i, p in enumerate(pairs) if p.template == t] for t in templates}
    hm_pairs = _same_length(lm, ioi_pairs(lm.tokenizer, 8 * config.heatmap_pairs, seed=config.seed + 1,
                                          templates=[config.heatmap_template]), config.heatmap_pairs)
    hm_data = _token_ids(lm, hm_pairs)
    heatmap = _heatmap(lm, hm_data, inputs.progress)
    tokens = [lm.tokenizer.decode([t]) for t in hm_data["base"][0].tolist()]
    data, test = sets["train"], sets["test"]
    if config.layer is None:  # just before the name movers, as the paper's MLP8 / resid 8 precede GPT-2's 9-10
        heads = _reader_heads(lm, data, n_layers // 2 - 1, config.n_reader_heads)
        layer = min(l for l, _ in heads) - 1
    else:
        layer = config.layer
        heads = _reader_heads(lm, data, layer, config.n_reader_heads)
    das = []
    resid_site = site("resid_post", layer)
    for kind, das_site in (("resid", resid_site), ("mlp", site("mlp_post", layer))):
        fit = train_das(lm, data["base"], data["source"], data["cf"], site=das_site, position=-1,
                        epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, patience=config.patience,
                        seed=config.seed, progress=inputs.progress)
        readers, reader_text = _readers(lm, kind, layer, heads)
        feature = torch.cat([test["feature"], 1 - test["feature"]])
        diag = diagnose(lm, site=das_site, position=-1, direction=fit.basis[:, 0], readers=readers,
                        base=test["base"], source=test["source"], answer=test["answer"],
                        counterfactual=test["cf"], source_answer=test["answer"],
                        source_alternative=test["cf"], feature=feature, baseline_site=resid_site, seed=config.seed)
        das.append({"site": das_site, "kind": kind, "layer": layer, "position": -1, "readers": reader_text,
                    "train_loss": fit.train_loss, "val_loss": fit.val_loss, "best_epoch": fit.best_epoch,
                    "lrs": fit.lrs, "effects": {k: v.to_dict() for k, v in diag.effects.items()},
                    "row_fraction": diag.row_fraction, "null_leak": diag.null_leak,
                    "row_std_ratio": diag.row_std_ratio, "null_feature_corr": diag.null_feature_corr,
                    "row_feature_corr": diag.row_feature_corr, "likely_illusion": diag.likely_illusion,
                    "reasons": diag.reasons})
    task_ld, task_acc = float(ld.mean()), float((ld > 0).float().mean())
    return SubspacePatchingResult(
        model=inputs.model_name, n_pairs=len(pairs), n_test=len(test_pairs), task_logit_diff=task_ld,
        task_accuracy=task_acc,
        templates=templates, template_logit_diff=[float(ld[per_t[t]].mean()) for t in templates],
        template_accuracy=[float((ld[per_t[t]] > 0).float().mean()) for t in templates],
        heatmap_layers=list(range(n_layers)), heatmap_tokens=tokens, heatmap=heatmap, das=das,
        verdict=_verdict(task_ld, task_acc, das, heatmap, config.split), split=config.split,
        n_train=len(train_pairs))


def _pairs(lm: LoadedModel, config) -> tuple[list, list]:
    """(train, test) pairs: disjoint halves of names/places/objects/templates (``"paper"``) or a random held-out part
    of one pool (``"random"``). Each set is of one token length (see :func:`_same_length`)."""
    n_test = max(2, int(round(config.test_fraction * config.n_pairs)))
    n_train = max(2, config.n_pairs - n_test)
    if config.split == "paper":
        train = _same_length(lm, ioi_pairs(lm.tokenizer, 8 * n_train, seed=config.seed, half="train"), n_train)
        test = _same_length(lm, ioi_pairs(lm.tokenizer, 8 * n_test, seed=config.seed + 2, half="test"), n_test)
        return train, test
    pairs = _same_length(lm, ioi_pairs(lm.tokenizer, 8 * config.n_pairs, seed=config.seed), config.n_pairs)
    n_test = max(2, int(round(config.test_fraction * len(pairs))))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return [pairs[i] for i in order[n_test:]], [pairs[i] for i in order[:n_test]]


def _verdict(task_ld: float, task_acc: float, das: list[dict], heatmap: list[list[float]], split: str) -> str:
    parts = [f"task: mean logit difference IO − S {task_ld:.2f}, accuracy {100 * task_acc:.0f}%"
             + ("" if task_ld > 0 and task_acc >= 0.6 else " — the model does NOT reliably do this task, so the "
                "patching results below say little")]
    peak = max((v, l, p) for l, row in enumerate(heatmap) for p, v in enumerate(row))
    parts.append(f"whole-site residual patching: largest FLDD {peak[0]:.2f} at layer {peak[1]}, position {peak[2]}")
    parts.append("held-out pairs use names, places, objects and templates unseen in DAS training (the paper's split)"
                 if split == "paper" else "held-out pairs are a random part of the training pool (in distribution: "
                 "optimistic; the paper's split is split='paper')")
    for e in das:
        eff = e["effects"]
        parts.append(f"{e['site']}: DAS direction FLDD {eff['v']['fldd']:.2f} (interchange accuracy "
                     f"{100 * eff['v']['interchange_accuracy']:.0f}%, LD < 0 on "
                     f"{100 * eff['v']['sign_rate']:.0f}%, fraction recovered vs the whole residual "
                     f"{eff['v']['recovered']:.2f}), row part {eff['v_row']['fldd']:.2f}, null part "
                     f"{eff['v_null']['fldd']:.2f}, whole site {eff['whole site']['fldd']:.2f} — "
                     + ("LIKELY ILLUSION" if e["likely_illusion"] else "not flagged") + ": " + e["reasons"][-1])
    parts.append("the illusion flags use this project's heuristic thresholds (FLDD ≥ 0.3, each part < half of it, "
                 "|r| ≥ 0.5 or a row-space std ratio < 0.5); the paper judges disconnected/dormant qualitatively "
                 "from projection histograms and v_null·W ≈ 0")
    return "; ".join(parts) + "."


ANALYSIS = Analysis(
    name="subspace_patching",
    description="IOI activation patching, 1-D DAS at a residual and an MLP site, interpretability-illusion checks",
    config=SubspacePatchingConfig, result=SubspacePatchingResult, compute=compute, needs_model=True,
    in_default_report=False,
)
