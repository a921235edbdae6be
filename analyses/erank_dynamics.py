"""Effective-rank dynamics over a generated response: ER_k of growing prefixes, ERV and ERA — headline on the
final-norm output, per block as an extension.

"Beyond the Exploration-Exploitation Trade-off: A Hidden State Approach for LLM Reasoning in RLVR", as computed by its
reference code (github.com/hf618/VERL). The formulas live in :mod:`workbench.spectra.dynamics`
(:func:`~workbench.spectra.dynamics.erv_era`); this module picks the states and runs them.

Which states (as VERL). The headline is the output of the model's final norm (``ln_final.hook_out``, what the LM
head reads): VERL's patched vLLM saves exactly that ("save the final norm output", ``hidden_vllm/model_executor/
models/{llama,qwen2}.py``). The residual stream after every block (``blocks.{l}.hook_resid_post``) is this project's
extension. Alignment: VERL records, for each generated token, the hidden state of the forward step that *sampled*
it (``append_hidden_state(output_token, hidden_states_decode)``: at prefill the last prompt position, then each
previous response token's position). So response token i (0-based, prompt length n) is represented by the state at
position n − 1 + i: the states at positions n−1 … n+T−2, never the last response token's own state.
``alignment="own"`` takes positions n … n+T−1 instead (each response token's own state; this module's earlier
choice). VERL stores the states in bf16; here they stay in the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from workbench.analysis import Analysis, Inputs
from workbench.capture.hooks import hooks_attached, site
from workbench.deprecation import moved
from workbench.errors import shape_error
from workbench.intervene.generation import generate
from workbench.models.chat import prompt_ids, response_ids
from workbench.models.loaded import LoadedModel
from workbench.results import Config, Result
from workbench.spectra import dynamics
from workbench.spectra.dynamics import VARIANTS, prefix_lengths
from workbench.validation import SEED, Bool, Choice, Int, Number, Optional, Str

__all__ = ["ErankDynamicsConfig", "ErankDynamicsResult", "compute", "response_hidden"]

# the formulas' old import path here keeps working for one release, with a DeprecationWarning
__getattr__ = moved(__name__, {name: "workbench.spectra.dynamics" for name in ("ErankDynamics", "erv_era",
                                                                               "rank_dynamics")})

SITE_KIND = "resid_post"  # the per-block extension: the residual stream after every block
FINAL_SITE = "ln_final.hook_out"  # the headline: the final norm's output (not a block site)
ALIGNMENTS = ("generating", "own")
DEFAULT_PROMPT = ("A farmer has 17 sheep. All but 9 run away, then he buys twice as many as he has left. "
                  "How many sheep does he have now? Think step by step.")


# ---------------------------------------------------------------------------------------------------------------
# Model-level analysis
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErankDynamicsConfig(Config):
    """``response``: score this text instead of generating (its tokens follow the prompt's). ``chat_template``: wrap
    the prompt as a user turn with the tokenizer's chat template when it has one. ``stride``/``max_seq_len``/
    ``center``/``variant`` as in :func:`erv_era` (VERL's ``diff_stride`` 20, ``max_seq_len`` 512, its configured
    ``diff_calculator_method: 'optimized'``). ``alignment``: ``"generating"`` (VERL: the state that produced each
    response token) or ``"own"`` (each response token's own state); see the module docstring.

    Example: ``run_analysis(lm, "erank_dynamics", ErankDynamicsConfig(prompt="Why is the sky blue?", max_new_tokens=64))``"""

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
    variant: str = "optimized"
    alignment: str = "generating"

    constraints = {"prompt": Str(nonempty=True), "response": Optional(Str(nonempty=True)), "max_new_tokens": Int(low=1),
                   "do_sample": Bool(), "seed": SEED, "temperature": Number(low=0, low_open=True),
                   "stride": Int(low=1), "max_seq_len": Int(), "center": Bool(), "chat_template": Bool(),
                   "variant": Choice(VARIANTS), "alignment": Choice(ALIGNMENTS)}

    def validate(self) -> None:
        super().validate()
        self.check("max_seq_len", self.max_seq_len >= self.stride, f"an int >= stride ({self.stride})")


@dataclass(frozen=True)
class ErankDynamicsResult(Result):
    """Headline: ``final_erank``/``final_erv``/``final_era`` on the final-norm output (``final_site``), as VERL.
    Extension, per block (index = layer): ``erank_t``/``erv``/``era`` on the residual stream. ER at prefix lengths
    ``ks`` of the window of ``n_tokens_used`` response tokens starting at response token ``window_start``; ERV/ERA
    None where undefined (2 prefixes for ERV, 3 for ERA).

    Example: ``dyn = run_analysis(lm, "erank_dynamics"); dyn.final_erv, dyn.plot_erv_era().show()``"""

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
    final_erank: list[float]
    final_erv: float | None
    final_era: float | None
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
    variant: str = "optimized"
    alignment: str = "generating"
    window_start: int = 0
    final_site: str = FINAL_SITE

    def _where(self) -> str:
        first = "last" if self.variant == "optimized" else "first"
        return f"variant '{self.variant}': the {first} {self.n_tokens_used} response tokens, stride {self.stride}"

    def plot(self) -> go.Figure:
        """The headline: ER_k of the final-norm output, with ERV/ERA in the title."""
        fig = go.Figure(go.Scatter(x=self.ks, y=self.final_erank, mode="lines+markers", name=self.final_site,
                                   line={"color": "#d62728"}))
        fig.update_layout(title=f"{self.model}: effective rank of the final-norm output ({self.final_site}) over "
                                f"growing prefixes; ERV {_fmt(self.final_erv)}, ERA {_fmt(self.final_era)} "
                                f"({self._where()})",
                          xaxis_title="k (prefix length, tokens of the window)", yaxis_title="effective rank ER_k",
                          height=420)
        return fig

    def plot_blocks(self) -> go.Figure:
        """Effective rank against prefix length, one line per block (residual stream), coloured from first to last
        layer.

        Example: ``dyn.plot_blocks().show()``"""
        n = len(self.erank_t)
        colours = sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])
        fig = go.Figure()
        for layer, (row, colour) in enumerate(zip(self.erank_t, colours, strict=True)):
            fig.add_trace(go.Scatter(x=self.ks, y=row, mode="lines+markers", name=f"layer {layer}",
                                     line={"color": colour}, marker={"size": 4}))
        fig.add_trace(go.Scatter(x=self.ks, y=self.final_erank, mode="lines", name="final norm",
                                 line={"color": "#d62728", "dash": "dash"}))
        fig.update_layout(title=f"Extension: the residual stream after each block "
                                f"({'centred' if self.center else 'uncentred'}, resid_post), final norm dashed",
                          xaxis_title="k (prefix length)", yaxis_title="effective rank ER_k", height=450)
        return fig

    def plot_erv_era(self) -> go.Figure:
        """ERV and ERA per block as bars, with the final-norm headline values drawn as reference lines.

        Example: ``dyn.plot_erv_era().show()``"""
        layers = list(range(len(self.erv)))
        fig = make_subplots(rows=1, cols=2, subplot_titles=("ERV (mean Δ ER)", "ERA (mean Δ² ER)"))
        fig.add_trace(go.Bar(x=layers, y=self.erv, name="ERV", marker_color="#1f77b4"), row=1, col=1)
        fig.add_trace(go.Bar(x=layers, y=self.era, name="ERA", marker_color="#9467bd"), row=1, col=2)
        for col, value in ((1, self.final_erv), (2, self.final_era)):
            if value is not None:
                fig.add_hline(y=value, line={"color": "#d62728", "dash": "dash"}, row=1, col=col,
                              annotation_text="final norm")
        fig.update_xaxes(title_text="layer (resid_post)")
        fig.update_layout(title=f"ERV and ERA by block, final norm dashed ({self._where()})", height=400,
                          showlegend=False)
        return fig

    def figures(self) -> list[go.Figure]:
        return [self.plot(), self.plot_blocks(), self.plot_erv_era()]

    def table(self):
        header = ["site", f"ER at k={self.ks[0]}", f"ER at k={self.ks[-1]}", "ERV", "ERA"]
        rows = [[f"{self.final_site} (headline)", self.final_erank[0], self.final_erank[-1], _show(self.final_erv),
                 _show(self.final_era)]]
        rows += [[site(SITE_KIND, layer), row[0], row[-1], _show(self.erv[layer]), _show(self.era[layer])]
                 for layer, row in enumerate(self.erank_t)]
        return header, rows

    def summary(self) -> str:
        n = len(self.ks)
        source = "generated" if self.generated else "given"
        parts = [f"{self.n_response_tokens} {source} response tokens; {self._where()}: {n} prefixes"]
        parts.append(f"final-norm output ({self.final_site}, the headline as VERL): effective rank "
                     f"{self.final_erank[0]:.1f} at k={self.ks[0]} and {self.final_erank[-1]:.1f} at k={self.ks[-1]}")
        if n < 2:
            parts.append("the response is too short to define ERV (needs 2 prefixes) or ERA (needs 3)")
        else:
            trend = ("the rank keeps growing as the response goes on" if self.final_erv > 0 else
                     "the rank shrinks as the response goes on")
            parts.append(f"ERV {self.final_erv:.3g} ({trend})")
            if n < 3:
                parts.append(f"the response is too short to define ERA (needs 3 prefixes, i.e. "
                             f"{3 * self.stride + (self.variant == 'optimized')} tokens)")
            else:
                parts.append(f"ERA {self.final_era:.3g}")
            defined = [v for v in self.erv if v is not None]
            parts.append(f"per block (extension, resid_post): ERV from {min(defined):.3g} to {max(defined):.3g}")
        if n < 5:
            parts.append("with this few prefixes ERV/ERA are noisy")
        return "; ".join(parts) + "."


def _show(value: float | None) -> float | str:
    return "undefined" if value is None else value


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3g}"


def _prompt_tokens(lm: LoadedModel, config: ErankDynamicsConfig) -> torch.Tensor:
    """[1, n] prompt ids (a chat-templated user turn, or the bridge's ``to_tokens``)."""
    return prompt_ids(lm, config.prompt, chat_template=config.chat_template)


def _full_tokens(lm: LoadedModel, config: ErankDynamicsConfig, prompt: torch.Tensor, progress: bool
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(tokens [1, n + T], states)``: prompt + response ids — the given response's ids appended, or the model's
    continuation from the KV-cached loop (:func:`workbench.intervene.generation.generate`, seeded with
    ``config.seed``: the same ids as the bridge's ``generate``) — and, when generated with ``alignment="generating"``,
    the ``(final, blocks)`` states the loop recorded at the step that produced each token (what
    :func:`response_hidden` computes from a full forward, without the extra forward); else None."""
    if config.response is not None:
        return torch.cat([prompt, response_ids(lm, config.response).to(prompt.device)], dim=1), None
    names = _state_sites(lm) if config.alignment == "generating" else []
    torch.manual_seed(config.seed)
    gen = generate(lm, [prompt[0]], max_new_tokens=config.max_new_tokens, do_sample=config.do_sample,
                   temperature=config.temperature, record=names, progress=progress,
                   desc="erank_dynamics: generating")
    tokens = torch.cat([prompt, gen.ids[0][None].to(prompt.device)], dim=1)
    if not names:
        return tokens, None
    return tokens, (gen.states[FINAL_SITE][0], torch.stack([gen.states[name][0] for name in names[:-1]]))


def _state_sites(lm: LoadedModel) -> list[str]:
    """Every block's residual stream, then the final norm's output (the last name)."""
    return [site(SITE_KIND, layer) for layer in range(lm.facts.n_layers)] + [FINAL_SITE]


def response_hidden(lm: LoadedModel, tokens: torch.Tensor, n_prompt: int, *, alignment: str = "generating"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(final [T, d], blocks [L, T, d])`` for the T = len(tokens) − n_prompt response tokens, from one forward pass:
    the final-norm output and the residual stream after every block, at positions n−1 … n+T−2 (``"generating"``:
    the state that produced each response token, as VERL) or n … n+T−1 (``"own"``).

    Example: ``final, blocks = response_hidden(lm, tokens, prompt.shape[1], alignment="own")``"""
    first = n_prompt - 1 if alignment == "generating" else n_prompt
    last = tokens.shape[1] - 1 if alignment == "generating" else tokens.shape[1]
    slices: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(tensor, hook=None):
            slices[name] = tensor[0, first:last].detach().float().cpu()
        return hook

    names = _state_sites(lm)
    with hooks_attached(lm.hook_points(), {name: keep(name) for name in names}), torch.no_grad():
        lm.model(tokens)
    return slices[FINAL_SITE], torch.stack([slices[name] for name in names[:-1]])


def compute(inputs: Inputs, config: ErankDynamicsConfig) -> ErankDynamicsResult:
    """Generate (or score the given ``response``), take the response tokens' hidden states in one forward, and compute
    effective rank over growing prefixes and its velocity (ERV) and acceleration (ERA), on the final-norm output and per
    block.

    Example: ``compute(inputs, ErankDynamicsConfig(prompt="Why is the sky blue?"))  # what run_analysis calls``"""
    lm = inputs.model
    prompt = _prompt_tokens(lm, config)
    tokens, states = _full_tokens(lm, config, prompt, inputs.progress)
    n_prompt = prompt.shape[1]
    n_response = tokens.shape[1] - n_prompt
    if not prefix_lengths(n_response, stride=config.stride, max_seq_len=config.max_seq_len, variant=config.variant)[2]:
        need = 2 * config.stride if config.variant == "optimized" else config.stride
        raise shape_error("erank_dynamics", "response", f"at least {need} tokens for stride={config.stride} "
                          f"(variant {config.variant!r})", f"{n_response} tokens")
    final, blocks = states if states is not None else response_hidden(lm, tokens, n_prompt,
                                                                         alignment=config.alignment)
    opts = {"stride": config.stride, "max_seq_len": config.max_seq_len, "center": config.center,
            "variant": config.variant}
    head, dyn = dynamics.erv_era(final, **opts), dynamics.erv_era(blocks, **opts)
    text = config.response if config.response is not None else lm.tokenizer.decode(
        tokens[0, n_prompt:].tolist(), skip_special_tokens=True)
    return ErankDynamicsResult(
        model=inputs.model_name, prompt=config.prompt, response=text, generated=config.response is None,
        n_prompt_tokens=n_prompt, n_response_tokens=n_response, n_tokens_used=dyn.n_tokens, ks=dyn.ks,
        final_erank=head.erank_t[0], final_erv=_none_if_nan(head.erv[0]), final_era=_none_if_nan(head.era[0]),
        erank_t=dyn.erank_t, erv=[_none_if_nan(v) for v in dyn.erv], era=[_none_if_nan(v) for v in dyn.era],
        stride=config.stride, max_seq_len=config.max_seq_len, center=config.center, do_sample=config.do_sample,
        seed=config.seed, temperature=config.temperature, chat_template=config.chat_template,
        variant=config.variant, alignment=config.alignment, window_start=dyn.start)


def _none_if_nan(value: float) -> float | None:
    """Undefined ERV/ERA are stored as None (JSON null): NaN is not JSON and breaks equality after a round trip."""
    return None if math.isnan(value) else value


ANALYSIS = Analysis(
    name="erank_dynamics",
    description="Effective rank of growing response prefixes on the final-norm output (and per block), and its "
                "velocity/acceleration (ERV, ERA) as VERL computes them",
    config=ErankDynamicsConfig, result=ErankDynamicsResult, compute=compute, needs_model=True,
)
