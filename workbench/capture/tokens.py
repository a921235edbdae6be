"""Texts → token ids → right-padded batches with masks of the rows each analysis keeps.

Batches are right-padded: under a causal mask real tokens never attend to the padding after them and keep their
positions, so a padded forward equals the unpadded one and pads are simply masked out of the statistics. Texts are
grouped by length (longest first) to waste little compute on padding; results are written back in text order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from workbench.errors import config_error
from workbench.models.loaded import LoadedModel
from workbench.validation import Int, check_optional, is_int

Positions = str | int


@dataclass(frozen=True)
class Tokenized:
    """One 1-D id tensor per text (BOS included when the model prepends one).

    Example: ``t: Tokenized = tokenize(lm, ["Hello world"], max_length=None, max_tokens=None); t.n_tokens``"""

    ids: list[torch.Tensor]
    has_bos: bool

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.ids)


@dataclass(frozen=True)
class Batch:
    """One padded batch of texts: which texts (``text_index``), the ``[B, T]`` right-padded ``tokens``, their
    ``lengths``, and the masks of rows kept for the statistics (``rows``) and averaged for the mean-pooled vector
    (``pooled``).

    Example: ``batch: Batch = next(batches(tokenized, 8, pad_id(lm), "all", True)); batch.tokens.shape``"""
    text_index: list[int]
    tokens: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    rows: torch.Tensor  # [B, T] bool: rows kept for the statistics
    pooled: torch.Tensor  # [B, T] bool: rows averaged for the mean-pooled vector (all non-pad, BOS excluded)


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list of non-empty strings (a single string is one text); ConfigError naming the first bad entry.

    Example: ``check_texts("one text")  # ["one text"]; empty or blank texts raise a ConfigError``"""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise config_error("capture", "texts", "a non-empty sequence of strings", texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise config_error("capture", f"texts[{i}]", "a non-empty string", text)
    return texts


def tokenize(lm: LoadedModel, texts: list[str], *, max_length: int | None,
             max_tokens: int | None) -> Tokenized:
    """Tokenize with the model's own BOS policy; cut each text to ``max_length`` and the total to ``max_tokens``.

    Example: ``tokenize(lm, ["Hello world", "Bonjour"], max_length=128, max_tokens=None).ids``"""
    for name, value in (("max_length", max_length), ("max_tokens", max_tokens)):
        check_optional("capture", name, value, Int(low=2))
    limit = min(max_length or lm.facts.n_ctx, lm.facts.n_ctx)
    bos_id = getattr(lm.tokenizer, "bos_token_id", None)
    ids, budget = [], max_tokens
    for text in texts:
        row = lm.model.to_tokens(text, truncate=False)[0][:limit].cpu()
        if budget is not None:
            row = row[:budget]
            budget -= len(row)
        if len(row):
            ids.append(row)
        if budget is not None and budget < 2:
            break
    has_bos = bos_id is not None and all(int(r[0]) == bos_id for r in ids)
    return Tokenized(ids=ids, has_bos=has_bos)


def pad_id(lm: LoadedModel) -> int:
    """The id used for right padding: the tokenizer's pad, else EOS, else BOS, else 0 (pads are never read).

    Example: ``right_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], pad_id(lm))``"""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(lm.tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def right_pad(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    """``[B, max length]``: the 1-D id tensors ``rows`` right-padded with ``pad``.

    Example: ``right_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], 0)  # [[1, 2, 3], [4, 0, 0]]``"""
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def check_positions(positions: Positions, tokenized: Tokenized) -> None:
    """ConfigError unless ``positions`` is ``"all"``, ``"last"`` or an int index valid in every text (BOS included,
    negative from the end), checked before any forward.

    Example: ``check_positions(-1, tokenize(lm, texts, max_length=None, max_tokens=None))``"""
    if positions in ("all", "last"):
        return
    if not is_int(positions):
        raise config_error("capture", "positions", "'all', 'last' or an int token index", positions)
    shortest = min(len(r) for r in tokenized.ids)
    if not -shortest <= positions < shortest:
        raise config_error("capture", "positions", f"an index valid for every text (shortest has {shortest} "
                           "tokens, BOS included)", positions)


def _masks(lengths: torch.Tensor, width: int, positions: Positions, skip_first: bool) -> tuple[torch.Tensor, ...]:
    arange = torch.arange(width)
    valid = arange[None, :] < lengths[:, None]
    pooled = valid.clone()
    if skip_first:
        pooled[:, 0] = False
    if positions == "all":
        return pooled, pooled
    index = lengths - 1 if positions == "last" else (lengths + positions if positions < 0 else
                                                      torch.full_like(lengths, positions))
    return arange[None, :] == index[:, None], pooled


def batches(tokenized: Tokenized, batch_size: int, pad_id: int, positions: Positions,
            exclude_bos: bool) -> Iterator[Batch]:
    """The texts in batches of ``batch_size``, longest first (less padding), each right-padded with the row masks for
    ``positions`` (the BOS row left out when ``exclude_bos`` and the model prepends one).

    Example: ``for batch in batches(tokenized, 8, pad_id(lm), "all", exclude_bos=True): lm.model(batch.tokens)``"""
    order = sorted(range(len(tokenized.ids)), key=lambda i: -len(tokenized.ids[i]))
    skip_first = exclude_bos and tokenized.has_bos
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        lengths = torch.tensor([len(tokenized.ids[i]) for i in chosen])
        tokens = right_pad([tokenized.ids[i] for i in chosen], pad_id)
        rows, pooled = _masks(lengths, tokens.shape[1], positions, skip_first)
        yield Batch(text_index=chosen, tokens=tokens, lengths=lengths, rows=rows, pooled=pooled)
