"""Effective-rank dynamics over a generated response: ER_k of growing prefixes, ERV and ERA per layer.

"Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach for LLM Reasoning in RLVR", as computed by its
reference code (hf618/VERL ``verl/trainer/metrics_utils.py``, ``_calculate_diffs_batched_single_device``; see
shared/PAPERS.md (a)). For the first K = min(T, max_seq_len) response tokens and k = s, 2s, ... <= K, ER_k is the
effective rank (Roy & Vetterli) of the mean-centred prefix H[:k]; Δ_k = ER_k − mean(earlier ER) from the 2nd stride,
ERV = mean Δ (effective-rank velocity), diff2_k = Δ_k − Δ_{k−s} from the 3rd stride, ERA = mean diff2 (acceleration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from workbench.capture.hooks import hooks_attached
from workbench.errors import config_error, shape_error
from workbench.models.chat import prompt_ids, response_ids
from workbench.registry import Analysis, register
from workbench.results import Config, Result, is_int
from workbench.runner import Inputs

VERL_EPS = 1e-8  # VERL's EPS in p = σ/(Σσ + EPS) and log(p + EPS)
SITE = "blocks.{layer}.hook_resid_post"
DEFAULT_PROMPT = ("A farmer has 17 sheep. All but 9 run away, then he buys twice as many as he has left. "
                  "How many sheep does he have now? Think step by step.")


# ---------------------------------------------------------------------------------------------------------------
# Tensor function (no model)
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErankDynamics:
    """What :func:`erv_era` returns; one entry per layer (a single ``[T, d]`` input counts as one layer).

    ``ks``: prefix lengths s, 2s, ... <= K. ``erank_t[l][i]``: ER of the first ``ks[i]`` tokens at layer l.
    ``erv``/``era``: NaN where undefined (ERV needs 2 strides, ERA 3).
    """

    ks: list[int]
    erank_t: list[list[float]]
    erv: list[float]
    era: list[float]
    n_tokens: int  # K, the tokens used


def rank_dynamics(erank: list[float]) -> tuple[list[float], list[float], float, float]:
    """VERL's arithmetic on one ER sequence: ``(deltas, diff2, erv, era)``, NaN where there are too few points.

    Δ_i = ER_i − mean(ER_0..ER_{i−1}) for i >= 1; diff2_i = Δ_i − Δ_{i−1} for i >= 2; ERV = mean Δ; ERA = mean diff2.
    (VERL divides the running sum by count + 1e-8; the plain mean differs from it by ~1e-8 relative.)
    """
    deltas = [erank[i] - sum(erank[:i]) / i for i in range(1, len(erank))]
    diff2 = [deltas[i] - deltas[i - 1] for i in range(1, len(deltas))]
    erv = sum(deltas) / len(deltas) if deltas else math.nan
    era = sum(diff2) / len(diff2) if diff2 else math.nan
    return deltas, diff2, erv, era


def _check_args(hidden: object, stride: object, max_seq_len: object, center: object) -> torch.Tensor:
    call = "erv_era"
    if isinstance(stride, bool) or not isinstance(stride, int) or stride <= 0:
        raise config_error(call, "stride", "an int >= 1", stride)
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < stride:
        raise config_error(call, "max_seq_len", f"an int >= stride ({stride})", max_seq_len)
    if not isinstance(center, bool):
        raise config_error(call, "center", "a bool", center)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim not in (2, 3):
        got = f"shape {tuple(hidden.shape)}" if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise shape_error(call, "hidden", "a tensor of shape [T, d] or [L, T, d]", got)
    if not hidden.dtype.is_floating_point:
        raise shape_error(call, "hidden", "a floating-point tensor", hidden.dtype)
    if hidden.shape[-2] < stride:
        raise shape_error(call, "hidden", f"at least stride={stride} tokens (dim -2)", f"shape {tuple(hidden.shape)}")
    if not bool(torch.isfinite(hidden).all()):
        raise shape_error(call, "hidden", "finite (no NaN/Inf)", "a tensor with NaN or Inf")
    return hidden if hidden.ndim == 3 else hidden.unsqueeze(0)


def _verl_erank(eigvals: torch.Tensor) -> torch.Tensor:
    """VERL's ``batched_effective_rank`` in float32: σ = sqrt(relu(λ)), p = σ/(Σσ + 1e-8), exp(−Σ p log(p + 1e-8)).

    Written out rather than calling ``workbench.spectra.effective_rank(s, eps=1e-8)``: that one returns 0 on an
    all-zero spectrum (e.g. identical tokens), where VERL's formula gives 1; elsewhere they agree exactly.
    """
    s = torch.sqrt(torch.relu(eigvals)).to(torch.float32)
    p = s / (s.sum(dim=-1, keepdim=True) + VERL_EPS)
    return torch.exp(-(p * torch.log(p + VERL_EPS)).sum(dim=-1))


def erv_era(hidden: torch.Tensor, *, stride: int = 20, max_seq_len: int = 512, center: bool = True) -> ErankDynamics:
    """ER_k at k = s, 2s, ... <= K = min(T, max_seq_len), and ERV/ERA, for ``hidden`` [T, d] or [L, T, d].

    Incremental: the uncentred Gram Σ hᵢhᵢᵀ [L, d, d] and the running token sum are accumulated one block of
    ``stride`` tokens at a time (from the first stride with k >= d); at each stride the prefix's centred Gram is G − k·μμᵀ (centring over the prefix's own
    tokens; ``center=False`` skips it) and one batched ``eigvalsh`` gives every layer's spectrum. The Gram, centring
    and eigenvalues are computed in float64 (G − kμμᵀ cancels badly in float32 when the mean is large, as it is in the
    residual stream); eigenvalues below the float64 round-off level (λ_max·d·eps) are set to 0 (the d − k exact zeros
    of a k-token prefix would otherwise come back as ±1e-16·λ_max noise); the singular values σ = sqrt(λ) are then
    cast to float32 for VERL's entropy (see :func:`_verl_erank`). While k < d the k×k Gram of the centred prefix
    tokens is used instead, as VERL does (same nonzero eigenvalues; a batched d×d ``eigvalsh`` costs seconds per
    stride on a CPU at d = 576, the k×k one milliseconds).
    """
    h = _check_args(hidden, stride, max_seq_len, center)
    n_layers, n_tokens, d = h.shape
    k_max = min(n_tokens, max_seq_len)
    gram = torch.zeros(n_layers, d, d, dtype=torch.float64, device=h.device)
    total = torch.zeros(n_layers, d, dtype=torch.float64, device=h.device)
    ks = list(range(stride, k_max + 1, stride))
    eranks = []
    done = 0  # tokens folded into gram/total (only needed once k >= d)
    for k in ks:
        if k < d:  # VERL's L-mode: the k×k token Gram has the same nonzero eigenvalues and is far cheaper
            x = h[:, :k].to(torch.float64)
            x = x - x.mean(dim=1, keepdim=True) if center else x
            g = x @ x.transpose(1, 2)
        else:
            block = h[:, done:k].to(torch.float64)
            gram += block.transpose(1, 2) @ block
            total += block.sum(dim=1)
            done = k
            g = gram - total.unsqueeze(2) * total.unsqueeze(1) / k if center else gram
        lam = torch.linalg.eigvalsh(g)
        tol = lam[:, -1:].clamp(min=0) * g.shape[-1] * torch.finfo(torch.float64).eps
        eranks.append(_verl_erank(torch.where(lam > tol, lam, torch.zeros_like(lam))))
    erank_t = torch.stack(eranks, dim=1).tolist()  # [L, n_strides]
    dyn = [rank_dynamics(row) for row in erank_t]
    return ErankDynamics(ks=ks, erank_t=erank_t, erv=[x[2] for x in dyn], era=[x[3] for x in dyn], n_tokens=k_max)


# ---------------------------------------------------------------------------------------------------------------
# Model-level analysis
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErankDynamicsConfig(Config):
    """``response``: score this text instead of generating (its tokens follow the prompt's). ``chat_template``: wrap
    the prompt as a user turn with the tokenizer's chat template when it has one. ``stride``/``max_seq_len``/``center``
    as in :func:`erv_era` (VERL's ``diff_stride`` 20, ``max_seq_len`` 512)."""

    kind = "erank_dynamics_config"
    prompt: str = DEFAULT_PROMPT
    response: str | None = None
    max_new_tokens: int = 160
    do_sample: bool = False
    seed: int = 0
    temperature: float = 1.0
    stride: int = 20
    max_seq_len: int = 512
    center: bool = True
    chat_template: bool = True

    def validate(self) -> None:
        self.check("prompt", isinstance(self.prompt, str) and bool(self.prompt), "a non-empty str")
        self.check("response", self.response is None or (isinstance(self.response, str) and bool(self.response)),
                   "None or a non-empty str")
        self.check("max_new_tokens", is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "an int >= 1")
        self.check("do_sample", isinstance(self.do_sample, bool), "a bool")
        self.check("seed", is_int(self.seed), "an int")
        self.check("temperature", isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
                   and math.isfinite(self.temperature) and self.temperature > 0, "a finite number > 0")
        self.check("stride", is_int(self.stride) and self.stride >= 1, "an int >= 1")
        self.check("max_seq_len", is_int(self.max_seq_len) and self.max_seq_len >= self.stride,
                   f"an int >= stride ({self.stride})")
        self.check("center", isinstance(self.center, bool), "a bool")
        self.check("chat_template", isinstance(self.chat_template, bool), "a bool")


@dataclass(frozen=True)
class ErankDynamicsResult(Result):
    """Per layer (index = layer): ER_k at ``ks``, ERV and ERA (None where undefined: ERV needs 2 strides, ERA 3)."""

    kind = "erank_dynamics"
    title = "Effective-rank dynamics over the response (ERV / ERA)"
    model: str
    prompt: str
    response: str
    generated: bool
    n_prompt_tokens: int
    n_response_tokens: int
    n_tokens_used: int
    ks: list[int]
    erank_t: list[list[float]]
    erv: list[float | None]
    era: list[float | None]
    stride: int
    max_seq_len: int
    center: bool
    do_sample: bool
    seed: int
    temperature: float
    chat_template: bool

    def plot(self) -> go.Figure:
        n = len(self.erank_t)
        colours = sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])
        fig = go.Figure()
        for layer, (row, colour) in enumerate(zip(self.erank_t, colours, strict=True)):
            fig.add_trace(go.Scatter(x=self.ks, y=row, mode="lines+markers", name=f"layer {layer}",
                                     line={"color": colour}, marker={"size": 4}))
        fig.update_layout(title=f"{self.model}: effective rank of the first k response tokens "
                                f"({'centred' if self.center else 'uncentred'}, resid_post)",
                          xaxis_title="k (response tokens)", yaxis_title="effective rank ER_k", height=450)
        return fig

    def plot_erv_era(self) -> go.Figure:
        layers = list(range(len(self.erv)))
        fig = make_subplots(rows=1, cols=2, subplot_titles=("ERV (mean Δ ER)", "ERA (mean Δ² ER)"))
        fig.add_trace(go.Bar(x=layers, y=self.erv, name="ERV", marker_color="#1f77b4"), row=1, col=1)
        fig.add_trace(go.Bar(x=layers, y=self.era, name="ERA", marker_color="#d62728"), row=1, col=2)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=f"ERV and ERA by layer (stride {self.stride}, {self.n_tokens_used} tokens)",
                          height=400, showlegend=False)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_erv_era()]

    def table(self):
        header = ["layer", f"ER at k={self.ks[0]}", f"ER at k={self.ks[-1]}", "ERV", "ERA"]
        rows = [[layer, row[0], row[-1], _show(self.erv[layer]), _show(self.era[layer])]
                for layer, row in enumerate(self.erank_t)]
        return header, rows

    def summary(self) -> str:
        n = len(self.ks)
        source = "generated" if self.generated else "given"
        parts = [f"{self.n_response_tokens} {source} response tokens ({self.n_tokens_used} used), {n} strides of "
                 f"{self.stride}"]
        last = len(self.erank_t) - 1
        parts.append(f"effective rank of the full prefix {self.erank_t[0][-1]:.1f} at layer 0 and "
                     f"{self.erank_t[last][-1]:.1f} at layer {last}")
        if n < 2:
            parts.append("the response is too short to define ERV (needs 2 strides) or ERA (needs 3)")
        else:
            defined = [v for v in self.erv if v is not None]
            trend = ("the rank keeps growing as the response goes on" if min(defined) > 0 else
                     "the rank shrinks as the response goes on" if max(defined) < 0 else "the sign varies by layer")
            parts.append(f"ERV from {min(defined):.3g} to {max(defined):.3g} across layers ({trend})")
            if n < 3:
                parts.append(f"the response is too short to define ERA (needs 3 strides, i.e. "
                             f"{3 * self.stride} tokens)")
            else:
                defined = [v for v in self.era if v is not None]
                parts.append(f"ERA from {min(defined):.3g} to {max(defined):.3g}")
        if n < 5:
            parts.append("with this few strides ERV/ERA are noisy")
        return "; ".join(parts) + "."


def _show(value: float | None) -> float | str:
    return "undefined" if value is None else value


def _prompt_tokens(lm, config: ErankDynamicsConfig) -> torch.Tensor:
    """[1, n] prompt ids (a chat-templated user turn, or the bridge's ``to_tokens``)."""
    return prompt_ids(lm, config.prompt, chat_template=config.chat_template)


def _full_tokens(lm, config: ErankDynamicsConfig, prompt: torch.Tensor, progress: bool) -> torch.Tensor:
    """Prompt + response ids: the given response's ids appended, or the model's continuation."""
    if config.response is not None:
        return torch.cat([prompt, response_ids(lm, config.response).to(prompt.device)], dim=1)
    torch.manual_seed(config.seed)
    with torch.no_grad():
        return lm.model.generate(prompt, max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                                 temperature=config.temperature, verbose=progress, return_type="tokens")


def response_hidden(lm, tokens: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """[L, T_resp, d] residual stream after every block at the response positions, from one forward pass."""
    n_layers = lm.facts.n_layers
    slices: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(tensor, hook=None):
            slices[layer] = tensor[0, n_prompt:].detach().float().cpu()
        return hook

    hooks = {SITE.format(layer=layer): keep(layer) for layer in range(n_layers)}
    with hooks_attached(lm.hook_points(), hooks), torch.no_grad():
        lm.model(tokens)
    return torch.stack([slices[layer] for layer in range(n_layers)])


def compute(inputs: Inputs, config: ErankDynamicsConfig) -> ErankDynamicsResult:
    lm = inputs.model
    prompt = _prompt_tokens(lm, config)
    tokens = _full_tokens(lm, config, prompt, inputs.progress)
    n_prompt = prompt.shape[1]
    hidden = response_hidden(lm, tokens, n_prompt)
    if hidden.shape[1] < config.stride:
        raise shape_error("erank_dynamics", "response", f"at least stride={config.stride} tokens",
                          f"{hidden.shape[1]} tokens")
    dyn = erv_era(hidden, stride=config.stride, max_seq_len=config.max_seq_len, center=config.center)
    text = config.response if config.response is not None else lm.tokenizer.decode(
        tokens[0, n_prompt:].tolist(), skip_special_tokens=True)
    return ErankDynamicsResult(
        model=inputs.model_name, prompt=config.prompt, response=text, generated=config.response is None,
        n_prompt_tokens=n_prompt, n_response_tokens=hidden.shape[1], n_tokens_used=dyn.n_tokens, ks=dyn.ks,
        erank_t=dyn.erank_t, erv=[_none_if_nan(v) for v in dyn.erv], era=[_none_if_nan(v) for v in dyn.era],
        stride=config.stride, max_seq_len=config.max_seq_len, center=config.center, do_sample=config.do_sample,
        seed=config.seed, temperature=config.temperature, chat_template=config.chat_template)


def _none_if_nan(value: float) -> float | None:
    """Undefined ERV/ERA are stored as None (JSON null): NaN is not JSON and breaks equality after a round trip."""
    return None if math.isnan(value) else value


register(Analysis(
    name="erank_dynamics",
    description="Effective rank of growing response prefixes per layer, and its velocity/acceleration (ERV, ERA)",
    config=ErankDynamicsConfig, result=ErankDynamicsResult, compute=compute, needs_model=True,
))
