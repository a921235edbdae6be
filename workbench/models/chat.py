"""Token ids of a prompt (optionally as a chat user turn) and of a response that follows it."""

from __future__ import annotations

import torch

from workbench.models.loaded import LoadedModel


def prompt_ids(lm: LoadedModel, prompt: str, *, chat_template: bool = True) -> torch.Tensor:
    """``[1, n]`` ids of ``prompt``: wrapped as a user turn with the generation prompt when ``chat_template`` and the
    tokenizer has a template (as the model saw in instruction tuning), else the bridge's ``to_tokens`` (BOS as the
    model expects). Never truncated silently.

    Example: ``prompt_ids(lm, "Why is the sky blue?", chat_template=False).shape  # [1, n]``"""
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long, device=lm.device)
    return lm.model.to_tokens(prompt, truncate=False).to(lm.device)


def response_ids(lm: LoadedModel, response: str) -> torch.Tensor:
    """``[1, m]`` ids of ``response`` as a continuation (no special tokens added).

    Example: ``torch.cat([prompt_ids(lm, "What is 3 + 4?"), response_ids(lm, "7.")], dim=1)``"""
    ids = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long, device=lm.device)


def user_turn(lm: LoadedModel, prompt: str) -> tuple[torch.Tensor, int, int]:
    """``(ids [n], start, end)``: ``prompt`` as a chat user turn with the generation prompt (the layout of
    :func:`prompt_ids`) and the span ``ids[start:end]`` of the user's own text in it — no role words, special tokens
    or template newlines — found from the tokenizer's character offsets. Tokens that straddle the text's edges are
    left out of the span.

    Example: ``ids, start, end = user_turn(lm, "Why is the sky blue?"); ids[start:end]``"""
    from workbench.errors import config_error

    call = "user_turn"
    tok = lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise config_error(call, "lm", "a model whose tokenizer has a chat template", type(tok).__name__)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    at = text.rfind(prompt.strip())
    if not prompt.strip() or at < 0:
        raise config_error(call, "prompt", "non-empty text that the chat template keeps verbatim", prompt)
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
        raise config_error(call, "lm", "a fast tokenizer (character offsets)", type(tok).__name__) from exc
    end_char = at + len(prompt.strip())
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a >= at and b <= end_char]
    if not inside:
        raise config_error(call, "prompt", "text that tokenises to at least one whole token", prompt)
    return torch.tensor(enc["input_ids"], dtype=torch.long), inside[0], inside[-1] + 1


DEFAULT_SYSTEM = "You are a helpful assistant."


def sft_text(lm: LoadedModel, prompt: str, response: str, *, chat_template: bool = True,
             system_prompt: str | None = DEFAULT_SYSTEM) -> str:
    """One (prompt, response) sample as MingLiiii/Gradient_Unified lays it out (``get_grad_vector_initial_try.py``,
    ``main``): with ``chat_template`` and a tokenizer that has one (the reference's ``--run_instruct_version``), the
    chat template of [system ``system_prompt``, user ``prompt``] with the generation prompt, then ``response``; else
    ``prompt + "\\n" + response``. ``system_prompt=None`` leaves the system turn out (the reference does so for
    models whose name contains "gemma").

    Example: ``sft_text(lm, "What is 3 + 4?", "3 + 4 = 7.", system_prompt=None)``"""
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        turns = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        turns.append({"role": "user", "content": prompt})
        return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + response
    return prompt + "\n" + response


def sft_ids(lm: LoadedModel, prompt: str, response: str, *, max_length: int, chat_template: bool = True,
            system_prompt: str | None = DEFAULT_SYSTEM) -> tuple[torch.Tensor, int]:
    """``([1, T] ids, n_prompt)`` of :func:`sft_text`, as the reference tokenises it (``cal_svd_vector_part_text``):
    the whole text at once with the tokenizer's own special tokens, cut to ``max_length`` (``tokenizer.encode(text,
    truncation=True, max_length=...)``); the response starts at token ``len(encode(text[:text.rfind(response)]))``
    (labels before it are -100). ``n_prompt >= T`` means no response token survived the cut.

    Example: ``ids, n_prompt = sft_ids(lm, "What is 3 + 4?", "3 + 4 = 7.", max_length=2048)``"""
    tok = lm.tokenizer
    text = sft_text(lm, prompt, response, chat_template=chat_template, system_prompt=system_prompt)
    ids = tok(text, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    n_prompt = len(tok(text[:text.rfind(response)], add_special_tokens=True)["input_ids"])
    return torch.tensor([ids], dtype=torch.long, device=lm.device), n_prompt
