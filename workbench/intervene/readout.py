"""Reading a model's output cheaply: next-token logits at chosen positions only, batched greedy generation (through
:mod:`workbench.intervene.generation`), and the log-likelihood of given continuations.

Why: with a 262k-token vocabulary (Gemma 3) the unembedding of every position costs more than the whole transformer
for short prompts. :func:`position_logits` stops the forward at the unembedding's input (a hook raising
:class:`~workbench.capture.hooks.StopForward`, removed in ``finally``) and unembeds only the rows asked for, with the
model's own ``unembed`` module, so the numbers equal the full forward's (test). Steering hooks attached around these
calls apply as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from workbench.capture.hooks import StopForward, hook_user, hooks_attached, stoppable
from workbench.capture.tokens import pad_id, right_pad
from workbench.errors import config_error, shape_error
from workbench.intervene.generation import cut_at_eos as cut_at_eos  # re-exported: its home before generation.py
from workbench.intervene.generation import generate
from workbench.models.loaded import LoadedModel
from workbench.validation import check_int

UNEMBED_INPUT = "unembed.hook_in"


@hook_user("readout.final_residual", exercise=lambda lm: final_residual(lm, lm.model.to_tokens("abc")))
def final_residual(lm: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]``: the input of the unembedding (after the final norm) for ``tokens`` ``[B, T]``; the forward stops
    there (no logits are computed).

    Example: ``unembed(lm, final_residual(lm, tokens))  # == the logits``"""
    box: dict[str, torch.Tensor] = {}

    def hook(x: torch.Tensor, hook=None) -> None:
        box["x"] = x.detach()
        raise StopForward

    points = lm.hook_points()
    if UNEMBED_INPUT not in points:
        raise config_error("final_residual", "lm", f"a model with the hook point {UNEMBED_INPUT!r}", type(lm).__name__)
    with stoppable(), hooks_attached(points, {UNEMBED_INPUT: hook}), torch.no_grad():
        lm.model(tokens.to(lm.device))
    if "x" not in box:  # pragma: no cover - the hook always fires on a forward
        raise RuntimeError("final_residual(): the unembedding input was never reached")
    return box["x"]


def unembed(lm: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., V]`` of final residuals ``x`` ``[..., d]`` through the model's own unembedding (float32).

    Example: ``unembed(lm, final_residual(lm, tokens)[:, -1])``"""
    flat = x.reshape(-1, 1, x.shape[-1])
    with torch.no_grad():
        out = lm.model.unembed(flat)
    return out.reshape(*x.shape[:-1], out.shape[-1]).float()


@hook_user("readout.position_logits", exercise=lambda lm: position_logits(lm, lm.model.to_tokens("abc"), torch.tensor([1])))
def position_logits(lm: LoadedModel, tokens: torch.Tensor, positions: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """``[B, V]`` next-token logits of example ``b`` at ``positions[b]`` (e.g. each prompt's last real token in a
    right-padded batch), computed without unembedding the other positions.

    Example: ``tokens, last = right_padded(lm, texts); position_logits(lm, tokens, last)``"""
    call = "position_logits"
    if tokens.ndim != 2:
        raise shape_error(call, "tokens", "a [B, T] id tensor", tuple(tokens.shape))
    if positions.shape != (tokens.shape[0],) or bool(((positions < 0) | (positions >= tokens.shape[1])).any()):
        raise shape_error(call, "positions", f"a [{tokens.shape[0]}] tensor of indices in [0, {tokens.shape[1]})",
                          tuple(positions.shape))
    out = []
    for rows in torch.arange(tokens.shape[0]).split(batch_size):
        x = final_residual(lm, tokens[rows])
        out.append(unembed(lm, x[torch.arange(len(rows), device=x.device), positions[rows].to(x.device)]))
    return torch.cat(out)


def token_set_margin(logits: torch.Tensor, plus_ids: Sequence[int], minus_ids: Sequence[int]) -> torch.Tensor:
    """``[B]`` Σ p(plus tokens) − Σ p(minus tokens) of next-token ``logits`` ``[B, V]`` (softmax over the whole
    vocabulary, float64): e.g. Spanish vs English tokens, positive vs negative words.

    Example: ``token_set_margin(last_logits(lm, tokens), es_ids, en_ids)``"""
    p = torch.softmax(logits.double(), dim=-1)
    return p[:, list(plus_ids)].sum(-1) - p[:, list(minus_ids)].sum(-1)


def texts_margin(lm: LoadedModel, texts: Sequence[str], plus_ids: Sequence[int], minus_ids: Sequence[int], *,
                 batch_size: int = 32) -> torch.Tensor:
    """``[B]`` :func:`token_set_margin` at the next token after each of ``texts``.

    Example: ``texts_margin(lm, ["The movie was"], positive_ids, negative_ids)``"""
    tokens, last = right_padded(lm, texts)
    return token_set_margin(position_logits(lm, tokens, last, batch_size=batch_size), plus_ids, minus_ids)


def right_padded(lm: LoadedModel, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, T], last [B])``: the texts tokenised as the model does (BOS policy included), right-padded, and
    the index of each text's last real token.

    Example: ``tokens, last = right_padded(lm, ["Hello", "A longer text"])``"""
    rows = [lm.model.to_tokens(t)[0].cpu() for t in texts]
    return right_pad(rows, pad_id(lm)), torch.tensor([len(r) - 1 for r in rows])


def greedy_continuations(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int,
                         batch_size: int = 32, progress: bool = False) -> list[torch.Tensor]:
    """Greedy continuations (new token ids, cut after the first EOS) of each prompt, generated in left-padded batches
    with the KV cache by :func:`workbench.intervene.generation.generate` — equal to generating each prompt alone and to
    the bridge's ``generate`` (tests). Steering hooks with ``positions="last"`` steer each prompt's last token and
    every generated token.

    Example: ``greedy_continuations(lm, ["Once upon a time"], max_new_tokens=20)``"""
    call = "greedy_continuations"
    check_int(call, "max_new_tokens", max_new_tokens, low=1)
    rows = [lm.model.to_tokens(p)[0].cpu() for p in prompts]
    return generate(lm, rows, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress).ids


def greedy_from_ids(lm: LoadedModel, ids: torch.Tensor, *, max_new_tokens: int, progress: bool = False) -> torch.Tensor:
    """The greedy continuation (new token ids, cut after the first EOS) of one prompt given as ids ``[T]`` — for
    prompts laid out by hand (e.g. a chat template, whose text would get a second BOS from ``to_tokens``).

    Example: ``greedy_from_ids(lm, prompt_ids(lm, "Why is the sky blue?")[0], max_new_tokens=40)``"""
    call = "greedy_from_ids"
    check_int(call, "max_new_tokens", max_new_tokens, low=1)
    if ids.ndim != 1 or len(ids) == 0:
        raise config_error(call, "ids", "a non-empty 1-D tensor of token ids", tuple(ids.shape))
    return generate(lm, [ids], max_new_tokens=max_new_tokens, progress=progress).ids[0]


def continuation_nll(lm: LoadedModel, prompts: Sequence[str], continuations: Sequence[torch.Tensor], *,
                     steers: Callable[[torch.Tensor], Sequence] | None = None, batch_size: int = 32) -> torch.Tensor:
    """``[B]`` mean negative log-likelihood (nats per token) of each continuation's tokens given its prompt (NaN for
    an empty continuation).

    ``steers``: optional ``positions -> [Steer, ...]``; it is called with a ``[b, T]`` bool mask of the positions from
    each prompt's last token onward (where generation-time steering with ``positions="last"`` acts) and the forward
    runs under those steers, so the likelihood is the steered model's, exactly as if it had been steering while
    reading the continuation.

    Example: ``continuation_nll(lm, prompts, greedy_continuations(lm, prompts, max_new_tokens=20))``"""
    from workbench.intervene.steer import steering

    if len(prompts) != len(continuations):
        raise config_error("continuation_nll", "continuations", f"one per prompt ({len(prompts)})",
                           len(continuations))
    rows, starts = [], []
    for prompt, cont in zip(prompts, continuations):
        p = lm.model.to_tokens(prompt)[0].cpu()
        rows.append(torch.cat([p, cont.cpu().long()]))
        starts.append(len(p))
    pad = pad_id(lm)
    out = torch.full((len(rows),), float("nan"), dtype=torch.float64)
    for idx in torch.arange(len(rows)).split(batch_size):
        idx = idx.tolist()
        tokens = right_pad([rows[i] for i in idx], pad)
        mask = torch.zeros(tokens.shape, dtype=torch.bool)
        for j, i in enumerate(idx):
            mask[j, starts[i] - 1:] = True
        with steering(lm, steers(mask.to(lm.device)) if steers else []):
            x = final_residual(lm, tokens)
        for j, i in enumerate(idx):
            start, end = starts[i], len(rows[i])
            if end <= start:
                continue
            logp = torch.log_softmax(unembed(lm, x[j, start - 1:end - 1]).double(), dim=-1)
            target = rows[i][start:end].to(logp.device)
            out[i] = float(-logp[torch.arange(end - start), target].mean())
    return out


def token_predictions(lm: LoadedModel, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 8,
                      progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token predictions over every position of ``texts`` (each cut to ``max_length`` tokens, BOS included):
    ``(nll, top1)``, both ``[N]`` for the N predicted tokens (each text's tokens after its first), in text order —
    the negative log-likelihood of the true next token (float64, nats) and the model's argmax there. Perplexity is
    ``exp(nll.mean())``; top-1 agreement of two models is ``(top1_a == top1_b).double().mean()``.

    Example: ``nll, top1 = token_predictions(lm, default_prompts("prose")[:16]); nll.mean().exp()``"""
    from workbench.capture import tokens as tok
    from workbench.progress import bar

    call = "token_predictions"
    check_int(call, "max_length", max_length, low=2)
    check_int(call, "batch_size", batch_size, low=1)
    texts = tok.check_texts(texts)
    rows = tok.tokenize(lm, texts, max_length=max_length, max_tokens=None).ids
    nll: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    top1: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    for start in bar(range(0, len(order), batch_size), desc="Next-token predictions", disable=not progress):
        chosen = order[start:start + batch_size]
        ids = right_pad([rows[i] for i in chosen], pad_id(lm)).to(lm.device)
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(ids)[:, :-1].float(), -1)
        for j, i in enumerate(chosen):
            n = len(rows[i]) - 1
            nll[i] = -logp[j, :n].gather(-1, ids[j, 1:n + 1, None])[:, 0].double().cpu()
            top1[i] = logp[j, :n].argmax(-1).cpu()
    return torch.cat(nll), torch.cat(top1)
