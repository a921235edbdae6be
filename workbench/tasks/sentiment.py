"""Sentiment as a steerable, automatically measurable attribute (Steer2Edit): contrastive positive/negative texts,
neutral prompts that invite an evaluation, a word lexicon and the token sets that score next-token sentiment.

All written for this project (``workbench/data/sentiment_pairs.jsonl``: 40 pairs that differ only in evaluative
words; ``sentiment_prompts.txt``: 40 neutral openers such as "The movie I watched last night was";
``sentiment_lexicon.json``: 89 positive and 93 negative words).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

from workbench.errors import ConfigError
from workbench.tasks.language import split_words


def _data(name: str) -> str:
    return resources.files("workbench.data").joinpath(name).read_text(encoding="utf-8")


def sentiment_pairs() -> list[tuple[str, str]]:
    """The bundled (positive, negative) texts, in file order.

    Example: ``positive, negative = zip(*sentiment_pairs())``"""
    return [(r["positive"], r["negative"]) for r in map(json.loads, _data("sentiment_pairs.jsonl").splitlines())
            if r]


def sentiment_prompts() -> list[str]:
    """The bundled neutral prompts (each invites an evaluative continuation).

    Example: ``greedy_continuations(lm, sentiment_prompts()[:4], max_new_tokens=20)``"""
    return [line.strip() for line in _data("sentiment_prompts.txt").splitlines() if line.strip()]


def sentiment_lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(positive words, negative words), lower case, disjoint.

    Example: ``positive_words, negative_words = sentiment_lexicon()``"""
    data = json.loads(_data("sentiment_lexicon.json"))
    return frozenset(data["positive"]), frozenset(data["negative"])


def sentiment_score(text: str) -> float:
    """(positive − negative lexicon words) / number of words of ``text``, in [−1, 1]; 0 for text without words.

    Example: ``sentiment_score("a wonderful, happy day")  # > 0``"""
    pos, neg = sentiment_lexicon()
    found = split_words(text)
    if not found:
        return 0.0
    return (sum(w in pos for w in found) - sum(w in neg for w in found)) / len(found)


def sentiment_token_ids(tokenizer, words: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """(positive ids, negative ids): the first token of each lexicon word written after a space
    (``tokenizer(" " + word)``), keeping tokens that belong to one side only. A :class:`ConfigError` when a side is
    empty (a tokenizer that knows none of the words).

    Example: ``pos_ids, neg_ids = sentiment_token_ids(lm.tokenizer)``"""
    pos_words, neg_words = sentiment_lexicon()
    special = set(getattr(tokenizer, "all_special_ids", None) or [])

    def first(word: str) -> int | None:
        ids = [i for i in tokenizer(" " + word, add_special_tokens=False)["input_ids"] if i not in special]
        return ids[0] if ids else None

    pos = {t for t in map(first, sorted(pos_words)) if t is not None}
    neg = {t for t in map(first, sorted(neg_words)) if t is not None}
    pos, neg = sorted(pos - neg), sorted(neg - pos)
    if not pos or not neg:
        raise ConfigError(f"sentiment_token_ids(): the tokenizer knows too few lexicon words (positive ids: "
                          f"{len(pos)}, negative ids: {len(neg)})")
    return pos, neg
