"""Layer-wise gradient spectra of the attention projections over (prompt, response) datasets, side by side.

"How Instruction and Reasoning Data shape Post-Training: Data Quality through the Lens of Layer-wise Gradients"
(Li et al., 2025), as its reference code computes it (MingLiiii/Gradient_Unified ``get_grad_vector_initial_try.py``;
shared/PAPERS.md (c)): one sample per backward pass; the loss is the mean next-token cross-entropy over the response
tokens only (prompt labels masked, -100); the gradient G of each attention projection (W_Q, W_K, W_V, W_O; the MLP
matrices optionally) of every layer is decomposed, G = U diag(σ) Vᵀ, giving the nuclear norm Σσ, the effective rank
exp(H(σ/Σσ)) (Roy & Vetterli, no ε), the Frobenius norm ‖G‖_F and the leading σ; these are averaged per
(projection, layer) over the samples (with the standard deviation), and the layer-to-layer cosine similarity of the
flattened gradients is averaged too. The paper's reading: better data → smaller nuclear norm and larger effective rank.

Memory: gradients come from ``torch.autograd.grad`` with respect to the chosen parameters only (nothing else requires
grad during the pass, nothing accumulates in ``.grad``), and each sample's gradients are reduced to their spectra and
cosines before the next sample: no gradient outlives its sample. Gradients are the same whichever orientation the
model stores a weight in (spectra do not change under transposition; heads are concatenated as in ``as_matrix``).

Effective rank is bounded by the number of tokens in the sample (a gradient is a sum of one outer product per
token), so response length confounds comparisons between datasets; the result reports token counts, and the default
adds a length-matched control: the first dataset with its responses shuffled across prompts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from workbench.progress import bar as progress_bar

from workbench.errors import config_error, shape_error
from workbench.models.adapters import LAYER_KINDS
from workbench.models.chat import prompt_ids, response_ids
from workbench.prompts import PAIR_SETS, bundled_pairs, read_pairs
from workbench.registry import Analysis, register
from workbench.results import PALETTE, Config, Result, is_int
from workbench.runner import Inputs
from workbench.spectra import batched_singular_values, effective_rank

ATTENTION = ("W_Q", "W_K", "W_V", "W_O")
DEFAULT_DATASETS = {"instruction": "bundled:instruction", "reasoning": "bundled:reasoning"}
METRICS = ("nuclear", "erank", "frobenius")


# ---------------------------------------------------------------------------------------------------------------
# Per-dataset computation (usable without the registry)
# ---------------------------------------------------------------------------------------------------------------

class _Running:
    """Float64 running sums of a tensor-valued statistic: mean and sample standard deviation (ddof 1)."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().to("cpu", torch.float64)
        self.n += 1
        self.total = x.clone() if self.total is None else self.total + x
        self.squares = x * x if self.squares is None else self.squares + x * x

    def mean(self) -> torch.Tensor:
        return self.total / self.n

    def std(self) -> torch.Tensor:
        if self.n < 2:
            return torch.zeros_like(self.total)
        var = (self.squares - self.total * self.total / self.n) / (self.n - 1)
        return var.clamp_min(0).sqrt()


@dataclass(frozen=True)
class DatasetGradients:
    """One dataset's averages. Tensors are ``[P, L]`` (projection × layer), ``top`` is ``[P, L, n_top]`` and
    ``cosine`` ``[P, L, L]``; ``*_std`` are standard deviations over samples."""

    projections: list[str]
    n_samples: int
    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    top: torch.Tensor
    cosine: torch.Tensor
    loss: tuple[float, float]
    prompt_tokens: float
    response_tokens: float
    seconds: float


def sample_ids(lm, prompt: str, response: str, *, max_length: int, chat_template: bool,
               where: str = "pairs[0]") -> tuple[torch.Tensor, int]:
    """``([1, T] ids, n_prompt)``: the prompt (chat-templated when asked) then the response, cut to ``max_length``
    tokens. Raises a ShapeError naming ``where`` when no response token survives the cut."""
    p = prompt_ids(lm, prompt, chat_template=chat_template)
    r = response_ids(lm, response).to(p.device)
    ids = torch.cat([p, r], dim=1)[:, :max_length]
    if ids.shape[1] <= p.shape[1]:
        raise shape_error("gradient_spectra", where, f"at least one response token within max_length={max_length} "
                          "after the prompt (the loss is on response tokens only)",
                          f"{p.shape[1]} prompt tokens, {r.shape[1]} response tokens")
    return ids, p.shape[1]


def response_loss(lm, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the response positions (the prompt's labels masked, as -100 does)."""
    logits = lm.model(ids)
    return F.cross_entropy(logits[0, n_prompt - 1:-1].float(), ids[0, n_prompt:])


def dataset_gradients(lm, pairs: Sequence[tuple[str, str]], *, projections: Sequence[str] = ATTENTION,
                      max_length: int = 512, chat_template: bool = True, n_top: int = 8, name: str = "dataset",
                      progress: bool = False) -> DatasetGradients:
    """Per-sample gradient spectra of ``projections`` at every layer over ``pairs``, averaged (see module doc)."""
    if not pairs:
        raise config_error("gradient_spectra", f"datasets[{name!r}]", "at least one (prompt, response) pair", [])
    started = time.perf_counter()
    params = lm.parameters(list(projections))
    n_layers = lm.facts.n_layers
    stats = {m: _Running() for m in METRICS}
    top, cosine, losses = _Running(), _Running(), []
    n_prompt_total = n_resp_total = 0
    encoded = [sample_ids(lm, p, r, max_length=max_length, chat_template=chat_template, where=f"{name}[{i}]")
               for i, (p, r) in enumerate(pairs)]  # all checked before the first backward
    saved = [(p, p.requires_grad) for p in lm.model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        for wp in params:
            wp.param.requires_grad_(True)
        for ids, n_prompt in progress_bar(encoded, desc=f"gradients: {name}", disable=not progress, leave=False):
            with torch.enable_grad():
                loss = response_loss(lm, ids, n_prompt)
                grads = torch.autograd.grad(loss, [wp.param for wp in params])
            mats = [wp.matrix(g) for wp, g in zip(params, grads, strict=True)]
            del grads
            sample = _sample_spectra(mats, len(projections), n_layers, n_top)
            for m in METRICS:
                stats[m].add(sample[m])
            top.add(sample["top"])
            cosine.add(sample["cosine"])
            losses.append(float(loss.detach()))
            n_prompt_total += n_prompt
            n_resp_total += ids.shape[1] - n_prompt
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    n = len(encoded)
    mean_loss = sum(losses) / n
    sd_loss = math.sqrt(sum((x - mean_loss) ** 2 for x in losses) / (n - 1)) if n > 1 else 0.0
    return DatasetGradients(
        projections=list(projections), n_samples=n, mean={m: s.mean() for m, s in stats.items()},
        std={m: s.std() for m, s in stats.items()}, top=top.mean(), cosine=cosine.mean(), loss=(mean_loss, sd_loss),
        prompt_tokens=n_prompt_total / n, response_tokens=n_resp_total / n, seconds=time.perf_counter() - started)


def _sample_spectra(mats: list[torch.Tensor], n_proj: int, n_layers: int, n_top: int) -> dict[str, torch.Tensor]:
    """Spectra of one sample's gradients (layer-major list) → ``[P, L]`` metrics, ``[P, L, k]`` top σ, ``[P, L, L]``
    cosines. One batched SVD per matrix shape."""
    svals = batched_singular_values(mats)
    out = {m: torch.zeros(n_proj, n_layers, dtype=torch.float64) for m in METRICS}
    out["top"] = torch.zeros(n_proj, n_layers, n_top, dtype=torch.float64)
    for i, (g, s) in enumerate(zip(mats, svals, strict=True)):
        layer, p = divmod(i, n_proj)
        s = s.double()
        out["nuclear"][p, layer] = s.sum()
        out["erank"][p, layer] = effective_rank(s)
        out["frobenius"][p, layer] = g.double().norm()
        k = min(n_top, s.numel())
        out["top"][p, layer, :k] = s[:k]
    cos = []
    for p in range(n_proj):
        flat = torch.stack([mats[layer * n_proj + p].reshape(-1) for layer in range(n_layers)]).double()
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
        cos.append(unit @ unit.T)
    out["cosine"] = torch.stack(cos)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradientSpectraConfig(Config):
    """``datasets``: label → ``"bundled:instruction"`` / ``"bundled:reasoning"`` or a JSONL path of
    ``{"prompt", "response"}``. ``projections``: attention (and optionally MLP) kinds. ``max_samples``: per dataset
    (None: all; 20 keeps the default report near 3 minutes on 2 CPU cores at ~3 s per sample). ``max_length``:
    prompt + response tokens per sample (the reference used 2048; the bundled samples are far shorter).
    ``chat_template``: wrap prompts as a user turn when the tokenizer has a template.
    ``shuffled_control``: add the first dataset with responses shuffled across prompts (same responses and lengths,
    mismatched prompts: a built-in low-quality control)."""

    kind = "gradient_spectra_config"
    datasets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DATASETS))
    projections: list[str] = field(default_factory=lambda: list(ATTENTION))
    max_samples: int | None = 20
    max_length: int = 512
    chat_template: bool = True
    n_top: int = 8
    shuffled_control: bool = True
    seed: int = 0

    def validate(self) -> None:
        self.check("datasets", isinstance(self.datasets, dict) and bool(self.datasets) and all(
            isinstance(k, str) and k and isinstance(v, str) and (
                v.removeprefix("bundled:") in PAIR_SETS if v.startswith("bundled:") else v.endswith(".jsonl"))
            for k, v in self.datasets.items()),
            f"a non-empty dict label → 'bundled:NAME' (NAME in {list(PAIR_SETS)}) or a .jsonl path")
        self.check("projections", isinstance(self.projections, (list, tuple)) and bool(self.projections)
                   and all(p in LAYER_KINDS for p in self.projections)
                   and len(set(self.projections)) == len(self.projections),
                   f"a non-empty list of distinct kinds from {LAYER_KINDS}")
        self.check("max_samples", self.max_samples is None or (is_int(self.max_samples) and self.max_samples >= 1),
                   "None or an int >= 1")
        self.check("max_length", is_int(self.max_length) and self.max_length >= 2, "an int >= 2")
        self.check("chat_template", isinstance(self.chat_template, bool), "True or False")
        self.check("n_top", is_int(self.n_top) and self.n_top >= 1, "an int >= 1")
        self.check("shuffled_control", isinstance(self.shuffled_control, bool), "True or False")
        self.check("seed", is_int(self.seed), "an int")


@dataclass(frozen=True)
class GradientSpectraResult(Result):
    """Column-wise over (dataset, projection, layer); per-dataset lists follow ``datasets``' order. ``cosine``:
    dataset → projection → ``[L][L]`` mean cosine similarity of flattened gradients between layers."""

    kind = "gradient_spectra"
    title = "Layer-wise gradient spectra of the attention projections"
    model: str
    datasets: list[str]
    n_samples: list[int]
    loss_mean: list[float]
    loss_std: list[float]
    prompt_tokens: list[float]
    response_tokens: list[float]
    seconds: list[float]
    dataset: list[str]
    projection: list[str]
    layer: list[int]
    nuclear_mean: list[float]
    nuclear_std: list[float]
    erank_mean: list[float]
    erank_std: list[float]
    frobenius_mean: list[float]
    frobenius_std: list[float]
    top_singular: list[list[float]]
    cosine: dict[str, dict[str, list[list[float]]]]
    max_length: int
    chat_template: bool
    control: str | None = None  # name of the shuffled-response control dataset, if any

    def projections(self) -> list[str]:
        return list(dict.fromkeys(self.projection))

    def rows(self, dataset: str, projection: str) -> list[int]:
        return [i for i in range(len(self.dataset)) if self.dataset[i] == dataset and self.projection[i] == projection]

    def layer_mean(self, dataset: str, projection: str, column: str) -> float:
        idx = self.rows(dataset, projection)
        return sum(getattr(self, column)[i] for i in idx) / len(idx)

    def plot(self) -> go.Figure:
        projs = self.projections()
        fig = make_subplots(rows=2, cols=len(projs), subplot_titles=projs, vertical_spacing=0.12)
        for k, name in enumerate(self.datasets):
            color = PALETTE[k % len(PALETTE)]
            for c, proj in enumerate(projs, 1):
                idx = self.rows(name, proj)
                for row, metric in ((1, "nuclear"), (2, "erank")):
                    fig.add_trace(go.Scatter(
                        x=[self.layer[i] for i in idx], y=[getattr(self, f"{metric}_mean")[i] for i in idx],
                        error_y={"type": "data", "array": [getattr(self, f"{metric}_std")[i] for i in idx],
                                 "thickness": 0.8, "width": 2},
                        mode="lines+markers", name=name, legendgroup=name, showlegend=row == 1 and c == 1,
                        line={"color": color, "dash": "dot" if name == self.control else "solid"}), row=row, col=c)
        fig.update_yaxes(title_text="nuclear norm", row=1, col=1)
        fig.update_yaxes(title_text="effective rank", row=2, col=1)
        fig.update_xaxes(title_text="layer", row=2)
        fig.update_layout(title=f"{self.model}: gradient nuclear norm (top) and effective rank (bottom) per layer; "
                                "mean ± sd over samples", height=650)
        return fig

    def plot_cosine(self) -> go.Figure:
        """Cosine between the gradients of adjacent layers (l, l+1), per projection and dataset."""
        projs = self.projections()
        fig = make_subplots(rows=1, cols=len(projs), subplot_titles=projs)
        for k, name in enumerate(self.datasets):
            for c, proj in enumerate(projs, 1):
                m = self.cosine[name][proj]
                fig.add_trace(go.Scatter(x=list(range(len(m) - 1)), y=[m[i][i + 1] for i in range(len(m) - 1)],
                                         mode="lines", name=name, legendgroup=name, showlegend=c == 1,
                                         line={"color": PALETTE[k % len(PALETTE)]}), row=1, col=c)
        fig.update_xaxes(title_text="layer l (vs l+1)")
        fig.update_yaxes(title_text="cosine", col=1)
        fig.update_layout(title="Layer-to-layer cosine similarity of flattened gradients (adjacent layers)", height=400)
        return fig

    def plot_cosine_matrix(self) -> go.Figure:
        name = self.datasets[0]
        projs = self.projections()
        fig = make_subplots(rows=1, cols=len(projs), subplot_titles=projs)
        for c, proj in enumerate(projs, 1):
            fig.add_trace(go.Heatmap(z=self.cosine[name][proj], zmin=-1, zmax=1, colorscale="RdBu_r",
                                     showscale=c == len(projs)), row=1, col=c)
        fig.update_xaxes(title_text="layer")
        fig.update_yaxes(title_text="layer", col=1)
        fig.update_layout(title=f"{name}: cosine similarity between all layer pairs", height=400)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_cosine(), self.plot_cosine_matrix()]

    def table(self):
        header = ["dataset", "samples", "loss", "response tokens", "projection", "nuclear norm (layer mean)",
                  "effective rank (layer mean)", "Frobenius (layer mean)"]
        rows = []
        for k, name in enumerate(self.datasets):
            for proj in self.projections():
                rows.append([name, self.n_samples[k], self.loss_mean[k], self.response_tokens[k], proj,
                             self.layer_mean(name, proj, "nuclear_mean"), self.layer_mean(name, proj, "erank_mean"),
                             self.layer_mean(name, proj, "frobenius_mean")])
        return header, rows

    def summary(self) -> str:
        projs = self.projections()
        parts = [", ".join(f"{n}: {self.n_samples[k]} samples, loss {self.loss_mean[k]:.2f}, "
                           f"{self.response_tokens[k]:.0f} response tokens" for k, n in enumerate(self.datasets))]
        real = [n for n in self.datasets if n != self.control]
        if len(real) >= 2:
            a, b = real[0], real[1]
            for metric, word in (("nuclear_mean", "nuclear norm"), ("erank_mean", "effective rank")):
                higher = [p for p in projs if self.layer_mean(b, p, metric) > self.layer_mean(a, p, metric)]
                parts.append(f"{b} has the higher {word} than {a} in {len(higher)}/{len(projs)} projections "
                             f"(layer means, {projs[0]}: {self.layer_mean(b, projs[0], metric):.3g} vs "
                             f"{self.layer_mean(a, projs[0], metric):.3g})")
            ka, kb = self.datasets.index(a), self.datasets.index(b)
            if abs(self.response_tokens[kb] - self.response_tokens[ka]) > 0.2 * self.response_tokens[ka]:
                parts.append(f"caution: responses differ in length ({self.response_tokens[kb]:.0f} vs "
                             f"{self.response_tokens[ka]:.0f} tokens) and effective rank is bounded by the token "
                             "count, so length confounds the effective-rank comparison")
        if self.control is not None:
            base = self.control.removesuffix(" (shuffled responses)")
            kc, kb = self.datasets.index(self.control), self.datasets.index(base)
            ratio = [self.layer_mean(self.control, p, "nuclear_mean") / self.layer_mean(base, p, "nuclear_mean")
                     for p in projs]
            verdict = "as the paper's reading predicts" if min(ratio) > 1 else \
                "which does NOT follow the paper's reading (mismatched data should give larger gradients)"
            parts.append(f"control: shuffling {base}'s responses across prompts moves the loss from "
                         f"{self.loss_mean[kb]:.2f} to {self.loss_mean[kc]:.2f} and scales the nuclear norm by "
                         f"{min(ratio):.2f}-{max(ratio):.2f}x over projections, {verdict}")
        return "; ".join(parts) + "."


def _pairs_for(source: str) -> list[tuple[str, str]]:
    if source.startswith("bundled:"):
        return bundled_pairs(source.removeprefix("bundled:"))
    return read_pairs(source)


def _shuffled(pairs: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Each prompt paired with another sample's response (a random cyclic derangement: no pair survives)."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [(pairs[order[i]][0], pairs[order[(i + 1) % len(order)]][1]) for i in range(len(order))]


def compute(inputs: Inputs, config: GradientSpectraConfig) -> GradientSpectraResult:
    lm = inputs.model
    data = {name: _pairs_for(source)[: config.max_samples] for name, source in config.datasets.items()}
    control = None
    if config.shuffled_control:
        first = next(iter(data))
        if len(data[first]) < 2:
            raise config_error("gradient_spectra", "shuffled_control", "False when the first dataset has one pair",
                               True)
        control = f"{first} (shuffled responses)"
        if control in data:
            raise config_error("gradient_spectra", "datasets", f"labels other than {control!r} (the control's name)",
                               list(data))
        data[control] = _shuffled(data[first], config.seed)
    max_length = min(config.max_length, inputs.facts.n_ctx)
    results = {name: dataset_gradients(lm, pairs, projections=config.projections, max_length=max_length,
                                       chat_template=config.chat_template, n_top=config.n_top, name=name,
                                       progress=inputs.progress) for name, pairs in data.items()}
    cols: dict[str, list] = {k: [] for k in ("dataset", "projection", "layer", "nuclear_mean", "nuclear_std",
                                             "erank_mean", "erank_std", "frobenius_mean", "frobenius_std",
                                             "top_singular")}
    for name, res in results.items():
        for p, proj in enumerate(res.projections):
            for layer in range(res.top.shape[1]):
                cols["dataset"].append(name)
                cols["projection"].append(proj)
                cols["layer"].append(layer)
                for m in METRICS:
                    cols[f"{m}_mean"].append(float(res.mean[m][p, layer]))
                    cols[f"{m}_std"].append(float(res.std[m][p, layer]))
                cols["top_singular"].append([float(v) for v in res.top[p, layer]])
    return GradientSpectraResult(
        model=inputs.model_name, datasets=list(results), n_samples=[r.n_samples for r in results.values()],
        loss_mean=[r.loss[0] for r in results.values()], loss_std=[r.loss[1] for r in results.values()],
        prompt_tokens=[r.prompt_tokens for r in results.values()],
        response_tokens=[r.response_tokens for r in results.values()],
        seconds=[round(r.seconds, 2) for r in results.values()], **cols,
        cosine={name: {proj: r.cosine[p].tolist() for p, proj in enumerate(r.projections)}
                for name, r in results.items()},
        max_length=max_length, chat_template=config.chat_template, control=control)


register(Analysis(
    name="gradient_spectra",
    description="Nuclear norm, effective rank and layer-to-layer cosine of per-sample gradients of W_Q/W_K/W_V/W_O",
    config=GradientSpectraConfig, result=GradientSpectraResult, compute=compute, needs_model=True,
))
