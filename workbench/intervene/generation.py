"""Generation at the speed of the model, with our hooks: a KV-cached greedy or sampled loop over the Hugging Face
model inside the TransformerBridge.

Why not ``TransformerBridge.generate``: it already keeps a KV cache, but its prefill unembeds every prompt position
(``B·T`` rows of a 262k-wide vocabulary on Gemma 3, most of a short generation's cost), and every step goes through
the bridge's ``forward`` (tokenising checks, a pad-derived mask rebuilt over the whole sequence, per-step Python
overhead). This loop calls the wrapped Hugging Face model (``lm.model.original_model``) directly with
``past_key_values`` and ``logits_to_keep=1``: the bridge replaces the Hugging Face submodules in place, so every
HookPoint (``blocks.L.hook_resid_post``, ``ln_final.hook_out``, ...) still fires on every forward and steering
hooks act as they do under ``generate``: ``positions="last"`` steers each prompt's last token at the prefill and
then every generated token (each later forward sees only the new token). Outputs equal ``generate``'s token for
token (tests: single prompts, left-padded batches, steering, sampling with the same seed).

Left-padded batches carry an explicit attention mask and mask-derived positions (``cumsum − 1``, as Hugging Face's
``generate`` and the bridge do), so a padded row generates exactly what the prompt generates alone.

What else a step gives: ``record`` keeps, at hook sites, the state of the last position of each forward — the state
of the step that produced each generated token (VERL's alignment in :mod:`erank_dynamics`: positions
n−1 … n+G−2 of a full forward over prompt + response) — and ``logits`` the next-token logits of each step
(``"steps"``) or of every position of prompt + response (``"all"``: the prefill unembeds every prompt position and
one more cached step reads the last token's; what TAM reads, without a second forward over the whole sequence).

Models that are not a bridge over a Hugging Face causal LM (a ``HookedTransformer``) take the uncached loop: one full
forward of ``lm.model`` per token, the same hooks, the same outputs, slower. ``cached=False`` forces it (the tests'
reference).

Progress: one :func:`workbench.progress.bar` step per generated token, so a front end sees each token, and a
callback that raises (the dashboard's Cancel) stops generation at that token; the loop's own hooks are removed in
``finally`` and the caller's ``steering`` blocks remove theirs as the exception passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workbench.capture.hooks import hook_user, hooks_attached
from workbench.capture.tokens import pad_id
from workbench.errors import config_error
from workbench.models.loaded import LoadedModel
from workbench.progress import bar as progress_bar
from workbench.validation import Choice, check_bool, check_int, check_number, check_optional

LOGITS = ("steps", "all")


@dataclass(frozen=True)
class Generation:
    """What :func:`generate` returns, one entry per prompt in prompt order.

    ``ids``: the new token ids, cut after the first EOS (the EOS kept). ``states[site]``: ``[G, d]`` float32 on the
    CPU, the site's activation at the last position of the forward that produced each of the ``G`` new tokens.
    ``logits``: ``[G, V]`` (``"steps"``) or ``[n + G, V]`` (``"all"``, ``n`` prompt tokens: the logits at every
    position of prompt + response, as one full forward gives them), float32 on the CPU; None when not asked for.

    Example: ``gen: Generation = generate(lm, rows, max_new_tokens=20, record=["blocks.5.hook_resid_post"])``"""

    ids: list[torch.Tensor]
    states: dict[str, list[torch.Tensor]]
    logits: list[torch.Tensor] | None = None


def left_pad(rows: Sequence[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, T], mask [B, T])``: 1-D id tensors left-padded with ``pad``; ``mask`` is 1 on real tokens.

    Example: ``tokens, mask = left_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], 0)  # [[1, 2, 3], [0, 0, 4]]``"""
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return tokens, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: ``cumsum(mask) − 1`` on real tokens, 1 on pads (Hugging Face's and the
    bridge's convention; pads are masked, their position is never read).

    Example: ``positions_from_mask(torch.tensor([[0, 1, 1], [1, 1, 1]]))  # [[1, 0, 1], [0, 1, 2]]``"""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def hf_causal_lm(lm: LoadedModel) -> torch.nn.Module | None:
    """The Hugging Face causal LM a TransformerBridge wraps (its submodules are the bridge's components, so hooks
    fire when it is called), or None when ``lm.model`` is not such a bridge.

    Example: ``hf_causal_lm(lm) is not None  # True for load_model's TransformerBridge``"""
    try:
        inner = lm.model.original_model
    except AttributeError:
        return None
    if not isinstance(inner, torch.nn.Module):
        return None
    params = inspect.signature(inner.forward).parameters
    if not {"past_key_values", "attention_mask", "logits_to_keep"} <= params.keys():
        return None
    return inner


def eos_id(lm: LoadedModel) -> int | None:
    """The tokenizer's EOS id, or None when it has none (generation then runs to ``max_new_tokens``).

    Example: ``cut_at_eos(row, eos_id(lm))``"""
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    return int(eos) if eos is not None else None


@hook_user("generation", exercise=lambda lm: generate(lm, [lm.model.to_tokens("abc")[0]], max_new_tokens=2, record=["blocks.0.hook_resid_post"]))
def generate(lm: LoadedModel, prompts: Sequence[torch.Tensor], *, max_new_tokens: int, do_sample: bool = False,
             temperature: float = 1.0, stop_at_eos: bool = True, record: Sequence[str] = (),
             logits: str | None = None, batch_size: int = 32, cached: bool = True, progress: bool = False,
             desc: str = "generating") -> Generation:
    """Generate up to ``max_new_tokens`` after each prompt (1-D id tensors, laid out as the model expects: BOS
    included), ``batch_size`` prompts at a time in left-padded batches, under whatever hooks are attached (steering
    with ``positions="last"`` steers each generated token). Greedy (``do_sample=False``) or sampled from
    softmax(logits / ``temperature``) with TransformerLens's ``sample_logits`` (the same draws from torch's global
    generator as ``TransformerBridge.generate`` for the same seed). A batch stops when every row has produced EOS
    (``stop_at_eos``); finished rows are fed EOS, as the bridge does. See the module docstring for ``record``,
    ``logits`` and ``cached``.

    Example: ``generate(lm, [lm.model.to_tokens("Once upon a time")[0]], max_new_tokens=20, logits="all").ids[0]``"""
    call = "generate"
    check_int(call, "max_new_tokens", max_new_tokens, low=1)
    check_int(call, "batch_size", batch_size, low=1)
    check_bool(call, "do_sample", do_sample)
    check_bool(call, "stop_at_eos", stop_at_eos)
    check_bool(call, "cached", cached)
    check_number(call, "temperature", temperature, low=0, low_open=True)
    check_optional(call, "logits", logits, Choice(LOGITS))
    rows = list(prompts)
    if not rows or not all(isinstance(r, torch.Tensor) and r.ndim == 1 and len(r) > 0 for r in rows):
        raise config_error(call, "prompts", "a non-empty list of non-empty 1-D token-id tensors",
                           [tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in rows][:4])
    points = lm.hook_points()
    missing = [name for name in record if name not in points]
    if missing:
        raise config_error(call, "record", "hook names of this model", missing)
    eos = eos_id(lm) if stop_at_eos else None
    out_ids: list[torch.Tensor] = []
    out_states: dict[str, list[torch.Tensor]] = {name: [] for name in record}
    out_logits: list[torch.Tensor] | None = [] if logits else None
    bar = progress_bar(total=max_new_tokens * -(-len(rows) // batch_size), desc=desc, disable=not progress,
                       leave=False, unit="tok")
    try:
        for start in range(0, len(rows), batch_size):
            chunk = [r.long().cpu() for r in rows[start:start + batch_size]]
            ids, states, chunk_logits = _generate_batch(lm, chunk, max_new_tokens=max_new_tokens,
                                                        do_sample=do_sample, temperature=temperature, eos=eos,
                                                        record=list(record), logits=logits, cached=cached, bar=bar)
            out_ids += ids
            for name in record:
                out_states[name] += states[name]
            if out_logits is not None:
                out_logits += chunk_logits
    finally:
        bar.close()
    return Generation(ids=out_ids, states=out_states, logits=out_logits)


def _generate_batch(lm: LoadedModel, chunk: list[torch.Tensor], *, max_new_tokens: int, do_sample: bool,
                    temperature: float, eos: int | None, record: list[str], logits: str | None, cached: bool,
                    bar) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]], list[torch.Tensor]]:
    from transformer_lens.utilities.logits_utils import sample_logits

    device = lm.device
    tokens, mask = left_pad(chunk, pad_id(lm))
    tokens, mask = tokens.to(device), mask.to(device)
    n_rows, width = tokens.shape
    hf = hf_causal_lm(lm) if cached else None
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in record}

    def keep(name: str):
        def hook(x: torch.Tensor, hook=None) -> None:
            kept[name].append(x[:, -1].detach().float().cpu())
        return hook

    new: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    prompt_logits = None
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    cache = None

    def forward(first: bool, keep_all: bool) -> torch.Tensor:
        """Logits ``[B, t, V]`` of the next forward: the prompt (``first``) or the newest token."""
        nonlocal cache
        if hf is None:  # the uncached reference: a full forward of prompt + everything generated so far
            return lm.model(tokens, attention_mask=mask) if n_rows > 1 else lm.model(tokens)
        pos = positions_from_mask(mask)
        out = hf(input_ids=tokens if first else tokens[:, -1:], attention_mask=mask,
                 position_ids=pos if first else pos[:, -1:], past_key_values=cache, use_cache=True,
                 logits_to_keep=0 if keep_all else 1)
        cache = out.past_key_values
        return out.logits

    with hooks_attached(lm.hook_points(), {name: keep(name) for name in record}), torch.no_grad():
        for step in range(max_new_tokens):
            all_logits = forward(step == 0, step == 0 and logits == "all")
            if step == 0 and logits == "all":
                prompt_logits = all_logits[:, :-1].float().cpu()
            last = all_logits[:, -1]  # in the model's dtype, as the bridge's generate samples from it
            if logits:
                step_logits.append(last.float().cpu())
            nxt = sample_logits(last, temperature=temperature) if do_sample else last.argmax(-1)
            nxt = nxt.to(device)
            if eos is not None:
                nxt[finished] = eos
                finished |= nxt == eos
            new.append(nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones((n_rows, 1), dtype=mask.dtype, device=device)], dim=1)
            bar.update()
            if eos is not None and bool(finished.all()):
                break
        if logits == "all":  # the last token's own logits: one more step (its states are not recorded)
            kept_before = {name: len(kept[name]) for name in record}
            step_logits.append(forward(False, False)[:, -1].float().cpu())
            for name in record:
                del kept[name][kept_before[name]:]
    generated = torch.stack(new, dim=1).cpu()  # [B, S]
    ids, states, logit_rows = [], {name: [] for name in record}, []
    stacked = {name: torch.stack(kept[name], dim=1) for name in record}  # [B, S, d]
    pads = width - mask[:, :width].sum(-1).cpu()
    for b in range(n_rows):
        row = cut_at_eos(generated[b], eos)
        ids.append(row)
        for name in record:
            states[name].append(stacked[name][b, :len(row)])
        if logits:
            steps = torch.stack([s[b] for s in step_logits[:len(row) + (logits == "all")]])
            if logits == "all":
                steps = torch.cat([prompt_logits[b, int(pads[b]):], steps])
            logit_rows.append(steps)
    return ids, states, logit_rows


def cut_at_eos(row: torch.Tensor, eos: int | None) -> torch.Tensor:
    """``row`` up to and including its first EOS (all of it when there is none).

    Example: ``cut_at_eos(torch.tensor([5, 7, 2, 9]), 2)  # tensor([5, 7, 2])``"""
    if eos is not None and bool((row == eos).any()):
        return row[:int((row == eos).nonzero()[0]) + 1]
    return row
