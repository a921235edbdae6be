"""TAM on a text model: the map of each generated token over the prompt tokens (raw, after estimated causal
inference, after the 1-D rank Gaussian filter).

How text positions are read (a choice the reference, written for image tokens, does not have to make): the score of
prompt token j is the explained token's logit at position j's own final hidden state — the reference's reading. The
alternative, the hidden state that *predicted* token j (position j − 1), was measured on the copy/recall set of the
``token_maps`` analysis and localises far worse (its evaluation table keeps both rows), so it is not the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.capture.hooks import hook_user
from workbench.errors import config_error, shape_error
from workbench.models.loaded import LoadedModel
from workbench.tam.core import (
    check_eci_weights,
    check_kernel_size,
    explained_token_maps,
    interfering_tokens,
    rank_gaussian_filter,
)
from workbench.validation import check_bool, check_int, check_str

STAGES = ("raw", "eci", "filtered")


@dataclass(frozen=True)
class TextTokenMaps:
    """Maps of a text model's generated tokens over its prompt tokens (BOS excluded): ``raw`` (class activations),
    ``eci`` (after estimated causal inference) and ``filtered`` (1-D rank Gaussian filter of ``eci``), each
    ``[G, P]`` for G generated and P prompt tokens, not normalised (see :func:`workbench.tam.min_max`).

    Example: ``maps: TextTokenMaps = text_token_maps(lm, "The capital of France is", max_new_tokens=3)``"""

    prompt_tokens: list[str]
    generated_tokens: list[str]
    raw: torch.Tensor
    eci: torch.Tensor
    filtered: torch.Tensor

    def stage(self, name: str) -> torch.Tensor:
        """The ``[G, P]`` map of one stage: ``"raw"``, ``"eci"`` or ``"filtered"`` (ConfigError otherwise).

        Example: ``maps.stage("eci").shape  # [G, P]``"""
        if name not in STAGES:
            raise config_error("TextTokenMaps.stage", "name", f"one of {list(STAGES)}", name)
        return getattr(self, name)

    def step(self, t: int) -> dict[str, torch.Tensor | str]:
        """The maps of generated token ``t`` (negative counts from the end); a clear error when out of range.

        Example: ``maps.step(-1)["token"]  # the last generated token, with its three maps``"""
        g = len(self.generated_tokens)
        check_int("TextTokenMaps.step", "t", t, low=-g, high=g, high_open=True,
                  allowed=f"a generated-token index in [{-g}, {g})")
        return {"token": self.generated_tokens[t], **{s: getattr(self, s)[t] for s in STAGES}}

    def top_inputs(self) -> list[dict]:
        """Per generated token, the prompt token with the largest score at each stage and its share of the map's
        total (0 when the map is all zero): "which input explains this output".

        Example: ``[(r["output"], r["eci"]["token"]) for r in maps.top_inputs()]``"""
        rows = []
        for t, token in enumerate(self.generated_tokens):
            row: dict = {"step": t, "output": token}
            for s in STAGES:
                m = getattr(self, s)[t]
                j = int(m.argmax())
                total = float(m.sum())
                row[s] = {"index": j, "token": self.prompt_tokens[j], "share": float(m[j]) / total if total else 0.0}
            rows.append(row)
        return rows

    def figure(self, title: str = ""):
        """Heat-map strips (one row per generated token) for the raw, ECI and filtered maps side by side.

        Example: ``text_token_maps(lm, "The capital of France is").figure("France").show()``"""
        from workbench.tam.plots import text_maps_figure

        return text_maps_figure(self, title)

    def _repr_html_(self) -> str:
        from workbench.results import figures_html  # plotly.js once per notebook session, as for results

        return figures_html([self.figure()])


def maps_from_logits(logits: torch.Tensor, ids: torch.Tensor, n_prompt: int, *, first: int = 1,
                     kernel_size: int = 3, last: int | None = None,
                     eci_weights: str = "reference") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(raw, eci, filtered)`` ``[G, P]`` maps of tokens ``ids[n_prompt:]`` over the prompt's text positions
    ``first..last−1`` (``last`` defaults to ``n_prompt``; inside a chat template it is where the user's text ends),
    from ``logits`` ``[T, V]`` (``logits[j]`` read at position j's final hidden state):

    - raw map A = relu(logits[text positions, y_t]);
    - interference from every earlier token (the text positions' tokens and earlier generated tokens) that is not
      the same token: its own map (relu(logit of that token) over the text positions), weighted by y_t's activation
      where :func:`~workbench.tam.core.interfering_tokens` reads it (``eci_weights``: ``"reference"`` — a generated
      token at the position that generated it, never y_t's own generating position — or ``"own_position"``), removed
      by :func:`estimated_causal_inference`;
    - the 1-D :func:`rank_gaussian_filter` (width ``kernel_size``) of the result (unfiltered when the prompt is
      shorter than the filter's half-width + 1).

    Example: ``raw, eci, filtered = maps_from_logits(sequence_logits(lm, ids), ids, n_prompt, kernel_size=3)``"""
    call = "maps_from_logits"
    if logits.ndim != 2 or ids.ndim != 1 or logits.shape[0] != ids.shape[0]:
        raise shape_error(call, "logits", "[T, V] logits for ids [T]", (tuple(logits.shape), tuple(ids.shape)))
    if not 0 <= first < n_prompt <= len(ids):
        raise config_error(call, "n_prompt", f"an int in ({first}, {len(ids)}]", n_prompt)
    last = n_prompt if last is None else last
    check_int(call, "last", last, low=first, high=n_prompt, low_open=True)
    if n_prompt == len(ids):
        raise config_error(call, "ids", "at least one generated token after the prompt", len(ids))
    check_eci_weights(call, eci_weights)
    logits = logits.double()  # computed on the logits' device; the maps come back there
    ids = ids.long().to(logits.device)
    explained = ids.tolist()  # the token ids as host ints, read once
    text_pos = torch.arange(first, last, device=logits.device)
    at_text = logits[text_pos]  # [P, V]
    raws, ecis, filtered = [], [], []
    for p in range(n_prompt, len(ids)):
        earlier, weight_at = interfering_tokens(text_pos, n_prompt, p, eci_weights)
        a, cleaned = explained_token_maps(at_text, logits, ids, earlier, explained[p], weight_at)
        raws.append(a)
        ecis.append(cleaned)
        filtered.append(rank_gaussian_filter(cleaned, kernel_size) if len(cleaned) > kernel_size // 2 else cleaned)
    return torch.stack(raws), torch.stack(ecis), torch.stack(filtered)


def sequence_logits(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """``[T, V]`` float64 logits of every position of ``ids`` ``[T]`` (one forward; causal, so equal to the logits
    seen while generating them), on the model's device.

    Example: ``logits = sequence_logits(lm, lm.model.to_tokens("The capital of France is Paris")[0])``"""
    from workbench.intervene.readout import final_residual, unembed

    return unembed(lm, final_residual(lm, ids[None])[0]).double()


def first_prompt_position(lm: LoadedModel, prompt_ids: torch.Tensor) -> int:
    """1 when the tokenizer's BOS leads ``prompt_ids`` (BOS gets no score), else 0.

    Example: ``first_prompt_position(lm, lm.model.to_tokens("Hello")[0])  # 1: SmolLM2 prepends BOS``"""
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    return 1 if bos is not None and int(prompt_ids[0]) == bos else 0


def prompt_layout(lm: LoadedModel, prompt: str, chat_template: bool) -> tuple[torch.Tensor, int, int]:
    """``(ids [n], first, last)``: the prompt's ids and the span of its text tokens. ``chat_template``: a user turn
    of the model's chat template with the generation prompt (the reference's layout: its text scores cover only the
    user's text, and the first answer token is generated at a template position), else the bridge's ``to_tokens``
    with BOS excluded from the span.

    Example: ``ids, first, last = prompt_layout(lm, "The capital of France is", chat_template=True)``"""
    from workbench.models.chat import user_turn

    if chat_template:
        return user_turn(lm, prompt)
    ids = lm.model.to_tokens(prompt)[0].cpu()
    return ids, first_prompt_position(lm, ids), len(ids)


@hook_user("tam.text_token_maps", exercise=lambda lm: text_token_maps(lm, "ab", max_new_tokens=2))
def text_token_maps(lm: LoadedModel, prompt: str, *, max_new_tokens: int = 16, kernel_size: int = 3, chat_template: bool = False,
                    eci_weights: str = "reference") -> TextTokenMaps:
    """TAM on a text model: greedy-generate up to ``max_new_tokens`` after ``prompt`` (laid out by
    :func:`prompt_layout`) with the KV-cached loop, which also returns every position's logits (the prefill's and each
    step's: what one forward over prompt + continuation gives, :func:`sequence_logits`), and :func:`maps_from_logits`
    gives the maps of each generated token over the prompt's text tokens.

    Example: ``text_token_maps(lm, "The capital of France is", max_new_tokens=3, chat_template=True).figure()``"""
    from workbench.intervene.generation import generate

    call = "text_token_maps"
    check_str(call, "prompt", prompt, nonempty=True)
    check_int(call, "max_new_tokens", max_new_tokens, low=1)
    check_kernel_size(call, kernel_size)
    check_eci_weights(call, eci_weights)
    check_bool(call, "chat_template", chat_template)
    prompt_ids, first, last = prompt_layout(lm, prompt, chat_template)
    if last - first < 1:
        raise config_error(call, "prompt", "at least one token besides BOS", prompt)
    gen = generate(lm, [prompt_ids], max_new_tokens=max_new_tokens, logits="all", desc="token maps: generating")
    generated = gen.ids[0]
    if len(generated) == 0:
        raise config_error(call, "max_new_tokens", "a generation of at least one token (the model stopped at once)",
                           max_new_tokens)
    ids = torch.cat([prompt_ids, generated.long()])
    raw, eci, filtered = maps_from_logits(gen.logits[0].double(), ids, len(prompt_ids), first=first, last=last,
                                          kernel_size=kernel_size, eci_weights=eci_weights)
    decode = lambda i: lm.tokenizer.decode([int(i)])  # noqa: E731
    return TextTokenMaps(prompt_tokens=[decode(i) for i in prompt_ids[first:last]],
                         generated_tokens=[decode(i) for i in generated], raw=raw, eci=eci, filtered=filtered)
