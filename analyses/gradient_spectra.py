"""Layer-wise gradient spectra of the attention projections over (prompt, response) datasets, side by side.

"How Instruction and Reasoning Data shape Post-Training: Data Quality through the Lens of Layer-wise Gradients"
(Li et al., 2025), as its reference code computes it (github.com/MingLiiii/Gradient_Unified,
``get_grad_vector_initial_try.py`` and ``vis/try_vis_*_two.py``): one sample per backward pass, laid out as the reference does
(:func:`workbench.models.chat.sft_ids`: for an instruct model the chat template with the system turn "You are a
helpful assistant." and the user turn, then the response; for a base model ``prompt + "\n" + response``; tokenised
jointly, cut at ``max_length`` 2048); the loss is the mean next-token cross-entropy over the response tokens only
(prompt labels -100); the gradient G of each attention projection (W_Q, W_K, W_V, W_O = the HF q/k/v/o_proj weights;
the MLP matrices optionally) of every layer gives the nuclear norm Σσ, the effective rank exp(H(σ/Σσ)) (Roy &
Vetterli, no ε), the Frobenius norm ‖G‖_F and the leading σ. Per (projection, layer) these are averaged over the
samples (with the standard deviation); as in the reference's plotting scripts, an entry whose Σσ < 1e-12 is left
out of the effective-rank average (not averaged in as 0; the result counts them) while the nuclear norm averages
every sample. The layer-to-layer cosine similarity of the flattened gradients, dot/(‖a‖‖b‖ + 1e-9) as the reference,
is averaged too. The paper's reading: better data → smaller nuclear norm and larger effective rank.

Speed (``route``): G = Σ_t δ_t x_tᵀ has rank <= T, so ``"factor"`` (default) captures each projection's inputs x_t
and output gradients δ_t with hooks and takes the spectrum from the T × T core of their QR factors
(:func:`workbench.spectra.gradients.gradient_spectrum`), exactly; ``"dense"`` decomposes the d × d gradient itself
(the reference's ``torch.linalg.svd(param.grad)``; here the float64 Gram route of ``batched_singular_values``). Both
agree to round-off (tested to 1e-6 relative); ``benchmarks/bench_gradient_spectra.py`` measures the ratio.

Memory: gradients come from ``torch.autograd.grad`` with respect to the chosen parameters (and, for the factor route,
the projections' outputs) only, nothing accumulates in ``.grad``, and each sample's gradients are reduced before the
next sample: no gradient outlives its sample. Spectra do not change under transposition, so the orientation a model
stores a weight in does not matter (heads are concatenated as in ``as_matrix``, i.e. as in q_proj, and GQA's k/v
projections keep their [n_kv·d_head, d_model] shape).

Effective rank is bounded by the number of tokens in the sample (a gradient is a sum of one outer product per
token), so response length confounds comparisons between datasets; the result reports token counts, and the default
adds a length-matched control: the first dataset with its responses shuffled across prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.capture.gradients import ATTENTION, METRICS, ROUTES, dataset_gradients
from workbench.deprecation import moved
from workbench.errors import config_error
from workbench.models.adapters import LAYER_KINDS
from workbench.models.chat import DEFAULT_SYSTEM
from workbench.prompts import PAIR_SETS, bundled_pairs, read_pairs
from workbench.results import PALETTE, Config, Result
from workbench.validation import SEED, Bool, Choice, DictOf, Int, ListOf, Optional, Str

# the gradient capture's names moved to workbench.capture.gradients; their old import path here keeps working for one
# release, with a DeprecationWarning
__getattr__ = moved(__name__, {name: "workbench.capture.gradients" for name in (
    "COMPONENT", "COSINE_EPS", "NUCLEAR_FLOOR", "DatasetGradients", "factor_sites", "response_loss", "sample_ids")})

DEFAULT_DATASETS = {"instruction": "bundled:instruction", "reasoning": "bundled:reasoning"}


def _dataset_source(source: str) -> bool:
    return source.removeprefix("bundled:") in PAIR_SETS if source.startswith("bundled:") else source.endswith(".jsonl")


# ---------------------------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradientSpectraConfig(Config):
    """``datasets``: label → ``"bundled:instruction"`` / ``"bundled:reasoning"`` or a JSONL path of
    ``{"prompt", "response"}``. ``projections``: attention (and optionally MLP) kinds. ``max_samples``: per dataset
    (None: all). ``max_length``: tokens per sample, prompt included (the reference's 2048: long reasoning answers
    must not be cut, the effective rank is bounded by the token count). ``chat_template``: the instruct layout (the
    reference's ``--run_instruct_version``) when the tokenizer has a template, else ``prompt + "\n" + response``.
    ``system_prompt``: the system turn of the instruct layout (the reference's; None leaves it out, as the reference
    does for Gemma). ``route``: ``"factor"`` (T × T core, exact, fast) or ``"dense"`` (d × d SVD), see the module
    docstring. ``shuffled_control``: add the first dataset with responses shuffled across prompts (same responses and
    lengths, mismatched prompts: a built-in low-quality control).

    Example: ``GradientSpectraConfig(datasets={"mine": "my-pairs.jsonl", "r": "bundled:reasoning"}, max_samples=5)``"""

    kind = "gradient_spectra_config"
    datasets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DATASETS))
    projections: list[str] = field(default_factory=lambda: list(ATTENTION))
    max_samples: int | None = 20
    max_length: int = 2048
    chat_template: bool = True
    system_prompt: str | None = DEFAULT_SYSTEM
    route: str = "factor"
    n_top: int = 8
    shuffled_control: bool = True
    seed: int = 0

    constraints = {
        "datasets": DictOf(Str(nonempty=True), Str().where(_dataset_source, "'bundled:NAME' or a .jsonl path"),
                           nonempty=True, allowed_text=f"a non-empty dict label → 'bundled:NAME' (NAME in "
                                                       f"{list(PAIR_SETS)}) or a .jsonl path"),
        "projections": ListOf(Choice(LAYER_KINDS), nonempty=True, distinct=True), "max_samples": Optional(Int(low=1)),
        "max_length": Int(low=2), "chat_template": Bool(), "system_prompt": Optional(Str()), "route": Choice(ROUTES),
        "n_top": Int(low=1), "shuffled_control": Bool(), "seed": SEED}


@dataclass(frozen=True)
class GradientSpectraResult(Result):
    """Column-wise over (dataset, projection, layer); per-dataset lists follow ``datasets``' order. ``cosine``:
    dataset → projection → ``[L][L]`` mean cosine similarity of flattened gradients between layers.

    Example: ``gr = run_analysis(lm, "gradient_spectra", GradientSpectraConfig(max_samples=5)); gr.plot_cosine()``"""

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
    erank_n: list[int] = field(default_factory=list)  # samples in each row's effective-rank mean
    erank_skipped: list[int] = field(default_factory=list)  # per dataset: (sample, projection, layer) with Σσ < 1e-12
    system_prompt: str | None = DEFAULT_SYSTEM
    route: str = "factor"

    def projections(self) -> list[str]:
        """The projection kinds present, in the order of the rows.

        Example: ``gr.projections()  # e.g. ["W_Q", "W_K", "W_V", "W_O"]``"""
        return list(dict.fromkeys(self.projection))

    def rows(self, dataset: str, projection: str) -> list[int]:
        """Row indices of one (dataset, projection), in layer order.

        Example: ``idx = gr.rows(gr.datasets[0], gr.projections()[0])``"""
        return [i for i in range(len(self.dataset)) if self.dataset[i] == dataset and self.projection[i] == projection]

    def layer_mean(self, dataset: str, projection: str, column: str) -> float:
        """Mean of one column over the layers of one (dataset, projection).

        Example: ``gr.layer_mean(gr.datasets[0], gr.projections()[0], "erank_mean")``"""
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
        """Cosine between the gradients of adjacent layers (l, l+1), per projection and dataset.

        Example: ``gr.plot_cosine().show()``"""
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
        """Heatmap per projection of the layer × layer gradient cosine of the first dataset.

        Example: ``gr.plot_cosine_matrix().show()``"""
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

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """Per layer rather than the table's layer means (a sweep draws each metric per layer and takes its own
        means): site ``<projection>/<dataset>`` (``W_Q/reasoning``), the row's layer, the sample means and standard
        deviations of the nuclear norm, effective rank and Frobenius norm, and the mean leading σ; plus, per dataset
        (site ``<dataset>``, no layer), samples, loss (mean, sd) and mean prompt and response tokens."""
        out = []
        for i, layer in enumerate(self.layer):
            site = f"{self.projection[i]}/{self.dataset[i]}"
            out += [(name, layer, site, float(getattr(self, column)[i])) for column, name in _LAYER_METRICS.items()]
            out += [("σ_max", layer, site, float(v)) for v in self.top_singular[i][:1]]
        return out + [(name, None, dataset, float(getattr(self, column)[k])) for k, dataset in enumerate(self.datasets)
                      for column, name in _DATASET_METRICS.items()]

    def summary(self) -> str:
        projs = self.projections()
        parts = [", ".join(f"{n}: {self.n_samples[k]} samples, loss {self.loss_mean[k]:.2f}, "
                           f"{self.response_tokens[k]:.0f} response tokens" for k, n in enumerate(self.datasets))]
        skipped = [f"{n}: {self.erank_skipped[k]}" for k, n in enumerate(self.datasets) if self.erank_skipped
                   and self.erank_skipped[k]]
        parts.append("gradients with nuclear norm < 1e-12 left out of the effective-rank means (as the reference): "
                     + (", ".join(skipped) if skipped else "none"))
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


_LAYER_METRICS = {"nuclear_mean": "nuclear norm", "nuclear_std": "nuclear norm sd", "erank_mean": "effective rank",
                  "erank_std": "effective rank sd", "frobenius_mean": "Frobenius norm",
                  "frobenius_std": "Frobenius norm sd"}
_DATASET_METRICS = {"n_samples": "samples", "loss_mean": "loss", "loss_std": "loss sd",
                    "prompt_tokens": "prompt tokens", "response_tokens": "response tokens"}


def _pairs_for(source: str) -> list[tuple[str, str]]:
    if source.startswith("bundled:"):
        return bundled_pairs(source.removeprefix("bundled:"))
    return read_pairs(source)


def _shuffled(pairs: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """Each prompt paired with another sample's response (a random cyclic derangement: no pair survives)."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [(pairs[order[i]][0], pairs[order[(i + 1) % len(order)]][1]) for i in range(len(order))]


def compute(inputs: Inputs, config: GradientSpectraConfig) -> GradientSpectraResult:
    """Per dataset, the response-token loss gradients of every attention (and MLP) projection per sample, their nuclear
    norm, effective rank and Frobenius norm per layer, and the cosine between layers' gradients.

    Example: ``compute(inputs, GradientSpectraConfig(max_samples=5))  # run_analysis(lm, "gradient_spectra") calls it``"""
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
                                       chat_template=config.chat_template, system_prompt=config.system_prompt,
                                       n_top=config.n_top, route=config.route, name=name, progress=inputs.progress)
               for name, pairs in data.items()}
    cols: dict[str, list] = {k: [] for k in ("dataset", "projection", "layer", "nuclear_mean", "nuclear_std",
                                             "erank_mean", "erank_std", "frobenius_mean", "frobenius_std",
                                             "top_singular", "erank_n")}
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
                cols["erank_n"].append(int(res.erank_n[p, layer]))
    return GradientSpectraResult(
        model=inputs.model_name, datasets=list(results), n_samples=[r.n_samples for r in results.values()],
        loss_mean=[r.loss[0] for r in results.values()], loss_std=[r.loss[1] for r in results.values()],
        prompt_tokens=[r.prompt_tokens for r in results.values()],
        response_tokens=[r.response_tokens for r in results.values()],
        seconds=[round(r.seconds, 2) for r in results.values()], **cols,
        cosine={name: {proj: r.cosine[p].tolist() for p, proj in enumerate(r.projections)}
                for name, r in results.items()},
        max_length=max_length, chat_template=config.chat_template, control=control,
        erank_skipped=[int((r.n_samples - r.erank_n).sum()) for r in results.values()],
        system_prompt=config.system_prompt, route=config.route)


ANALYSIS = Analysis(
    name="gradient_spectra",
    description="Nuclear norm, effective rank and layer-to-layer cosine of per-sample gradients of W_Q/W_K/W_V/W_O",
    config=GradientSpectraConfig, result=GradientSpectraResult, compute=compute, needs_model=True,
)
