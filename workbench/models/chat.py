"""Token ids of a prompt (optionally as a chat user turn) and of a response that follows it."""

from __future__ import annotations

import torch


def prompt_ids(lm, prompt: str, *, chat_template: bool = True) -> torch.Tensor:
    """``[1, n]`` ids of ``prompt``: wrapped as a user turn with the generation prompt when ``chat_template`` and the
    tokenizer has a template (as the model saw in instruction tuning), else the bridge's ``to_tokens`` (BOS as the
    model expects). Never truncated silently."""
    tok = lm.tokenizer
    if chat_template and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return torch.tensor([ids], dtype=torch.long, device=lm.device)
    return lm.model.to_tokens(prompt, truncate=False).to(lm.device)


def response_ids(lm, response: str) -> torch.Tensor:
    """``[1, m]`` ids of ``response`` as a continuation (no special tokens added)."""
    ids = lm.tokenizer(response, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids], dtype=torch.long, device=lm.device)
