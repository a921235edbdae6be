"""English/Spanish data for language steering: a bundled parallel set, an offline language detector, and the token
sets that tell the two languages apart.

- :func:`load_en_es_pairs`: 140 English sentences with faithful Spanish translations, written for this project
  (``workbench/data/en_es_pairs.jsonl``, 14 everyday topics; most end mid-thought, so they invite a continuation).
- :func:`detect_language` / :func:`spanish_score`: a small rule-based detector (stopwords, Spanish-only
  characters, suffixes) to judge whether a generation came out in Spanish or English, without any model or
  download.
- :func:`language_token_ids`: token ids of word-initial tokens seen only on one side of the pairs, for logit-based
  measures of "how Spanish" the next-token distribution is; :func:`unicode_token_ids`: the reference's script-based
  sets (Neural FOXP2).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from importlib import resources

from workbench.errors import ConfigError, config_error
from workbench.validation import check_int, is_number

PAIRS_FILE = "en_es_pairs.jsonl"
SPLITS = ("train", "test")

# Common function words, lower case, written for this project. Words that are frequent in *both* languages
# ("a", "no", "me", "he", "son", "once", "come", "era", "sea", "solo", "real", ...) are left out of both lists, so
# that a word is evidence for one language only (the lists are disjoint; a test checks it).
SPANISH_STOPWORDS: frozenset[str] = frozenset("""
    de la que el en y los del se las por un para con una su al lo como más pero sus le ya o este sí porque esta
    entre cuando muy sin sobre también hasta hay donde dónde quien quién desde todo nos durante todos uno les ni
    contra otros ese eso ante ellos e esto mí antes algunos qué unos yo otro otras otra él tanto esa estos mucho
    muchos mucha muchas quienes nada cual cuál poco ella estar estas algunas algo nosotros mi mis tú te ti tu tus
    ellas nosotras vosotros es está están estaba fue ser tiene tengo hace puede pues aquí siempre nunca cada
    después entonces bien mejor ahora hoy mañana ayer cómo cuánto cuándo tan todas toda esos esas aunque
    dentro fuera casi tampoco nuestro nuestra nuestros nuestras vuestro había han hemos ha eres soy somos estoy
    estamos tenemos tienen tenía hacer va vamos
""".split())

ENGLISH_STOPWORDS: frozenset[str] = frozenset("""
    the of and to in is you that it was for on are as with his they i at be this have from or one had by but not
    what all were we when your can said there an each which she do how their if will up about out many then them
    these so some her would make like him into time has look two more go see my than been who its now did get just
    should could because very after where our before always never those while through every why our us any does
    doesn't don't didn't isn't wasn't aren't can't won't it's i'm i've i'd you're we're they're there's what's
    that's let's here also only other such well even most much again already still too really yesterday today
    tomorrow without between during under over around something nothing everyone
""".split())

SPANISH_CHARS = frozenset("ñáéíóúü¿¡")
SPANISH_SUFFIXES = ("ción", "ciones", "mente", "dad", "dades")
ENGLISH_SUFFIXES = ("tion", "tions", "ing", "ly")
SUFFIX_MIN_LENGTH = 5  # shorter words ("dad", "sing", "fly", "only") are not judged by their ending
MIN_WORDS = 3
SMOOTHING = 0.5

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def split_words(text: str) -> list[str]:
    """Alphabetic words (apostrophes kept inside: "don't"), lower case; curly apostrophes count as straight ones.

    Example: ``split_words("Don't stop, ¡Vamos!")  # ["don't", "stop", "vamos"]``"""
    return _WORD.findall(text.replace("\u2019", "'").lower())


def _evidence(text: str) -> tuple[float, float, int]:
    """(Spanish evidence, English evidence, number of words) of ``text``; see :func:`spanish_score`."""
    words = split_words(text)
    es = float(sum(ch in SPANISH_CHARS for ch in text.lower()))
    en = 0.0
    for word in words:
        es += word in SPANISH_STOPWORDS
        en += word in ENGLISH_STOPWORDS
        if len(word) >= SUFFIX_MIN_LENGTH:
            es += word.endswith(SPANISH_SUFFIXES)
            en += word.endswith(ENGLISH_SUFFIXES)
    return es, en, len(words)


def spanish_score(text: str) -> float:
    """How Spanish ``text`` looks, in [0, 1]: ``(S + 0.5) / (S + E + 1)``.

    ``S`` (Spanish evidence) counts one point per word in :data:`SPANISH_STOPWORDS`, one per Spanish-only
    character (ñ, á, é, í, ó, ú, ü, ¿, ¡; case-insensitive) and one per word of at least 5 letters ending in
    -ción/-ciones/-mente/-dad/-dades. ``E`` (English evidence) counts one point per word in
    :data:`ENGLISH_STOPWORDS` and one per word of at least 5 letters ending in -tion/-tions/-ing/-ly. Words are
    runs of letters (apostrophes inside kept, "don't"), compared in lower case. The 0.5 smoothing keeps the score
    strictly inside (0, 1) and makes text with no evidence either way score exactly 0.5; English prose of ten
    words typically scores below 0.1, Spanish above 0.9, and a half-and-half mix near 0.5.

    Example: ``spanish_score("El gato está en la casa")  # > 0.5``"""
    es, en, _ = _evidence(text)
    return (es + SMOOTHING) / (es + en + 2 * SMOOTHING)


def detect_language(text: str) -> str:
    """``"es"``, ``"en"`` or ``"unknown"`` for ``text``, by the evidence of :func:`spanish_score`.

    Rule: fewer than 3 alphabetic words (empty text included) -> ``"unknown"``; otherwise ``"es"`` if the Spanish
    evidence ``S`` exceeds the English evidence ``E`` (equivalently ``spanish_score > 0.5``), ``"en"`` if ``E``
    exceeds ``S``, and ``"unknown"`` on a tie (no evidence at all included).

    Example: ``detect_language("The cat is on the mat")  # "en"``"""
    es, en, n_words = _evidence(text)
    if n_words < MIN_WORDS or es == en:
        return "unknown"
    return "es" if es > en else "en"


def _records() -> list[dict]:
    text = resources.files("workbench.data").joinpath(PAIRS_FILE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def en_es_topics() -> list[str]:
    """Topics of the bundled English/Spanish pairs (food, travel, weather, ...), in file order.

    Example: ``en_es_topics()[:3]``"""
    return list(dict.fromkeys(r["topic"] for r in _records()))


def load_en_es_pairs(split: str | None = None, *, seed: int = 0,
                     test_fraction: float = 0.3) -> list[tuple[str, str]]:
    """The bundled (English, Spanish) sentence pairs written for this project, in file order; ``split``: None (all),
    ``"train"`` or ``"test"`` as :func:`split_pairs` makes them.

    Example: ``train = load_en_es_pairs("train", seed=0, test_fraction=0.3)``"""
    pairs = [(r["en"], r["es"]) for r in _records()]
    return split_pairs(pairs, split, seed=seed, test_fraction=test_fraction, call="load_en_es_pairs")


def split_pairs(pairs: Sequence[tuple[str, str]], split: str | None, *, seed: int = 0, test_fraction: float = 0.3,
                call: str = "split_pairs") -> list[tuple[str, str]]:
    """A deterministic train/test split of ``pairs``: ``random.Random(seed)`` permutes the pair indices and the first
    ``round(test_fraction * n)`` of them form the test split, the rest the train split (both returned in the input
    order, disjoint, together all pairs; ``split=None`` returns all). ``test_fraction`` must be in (0, 1) and leave
    at least one pair on each side.

    Example: ``split_pairs(load_en_es_pairs(), "test", seed=1, test_fraction=0.2)``"""
    if split is not None and split not in SPLITS:
        raise config_error(call, "split", f"None or one of {list(SPLITS)}", split)
    check_int(call, "seed", seed)
    pairs = list(pairs)
    valid_fraction = is_number(test_fraction) and 0 < test_fraction < 1
    n_test = round(test_fraction * len(pairs)) if valid_fraction else 0
    if not 1 <= n_test <= len(pairs) - 1:
        raise config_error(call, "test_fraction",
                           f"a float in (0, 1) leaving at least one of the {len(pairs)} pairs in each split",
                           test_fraction)
    if split is None:
        return pairs
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n_test]) if split == "test" else set(order[n_test:])
    return [pair for i, pair in enumerate(pairs) if i in chosen]


def _first_token(tokenizer, word: str, special: set[int]) -> int | None:
    ids = list(tokenizer(" " + word, add_special_tokens=False)["input_ids"])
    ids = [i for i in ids if i not in special]
    return ids[0] if ids else None


def language_token_ids(tokenizer, pairs: Sequence[tuple[str, str]], *,
                       min_count: int = 2) -> tuple[list[int], list[int]]:
    """(English ids, Spanish ids): first tokens of words that mark one language in ``pairs``.

    Each word of each side (runs of letters as they are written, apostrophes inside kept) is tokenized with a
    leading space, as it appears after another word, ``tokenizer(" " + word, add_special_tokens=False)``, and its
    first token counted for that side (special tokens, the unknown token included, are skipped). A token is kept for
    a language when it occurs at least ``min_count`` times on that side and never on the other. Both lists are
    sorted and disjoint; a :class:`ConfigError` is raised when either is empty.

    Example: ``en_ids, es_ids = language_token_ids(lm.tokenizer, load_en_es_pairs("train"), min_count=2)``"""
    call = "language_token_ids"
    if not callable(tokenizer):
        raise config_error(call, "tokenizer", "a Hugging Face tokenizer (callable on a string)", tokenizer)
    if (isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs
            or not all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)
                       for p in pairs)):
        raise config_error(call, "pairs", "a non-empty sequence of (english, spanish) string pairs", pairs)
    check_int(call, "min_count", min_count, low=1)

    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        special.add(unk)
    cache: dict[str, int | None] = {}
    counts = (Counter(), Counter())  # English, Spanish
    for pair in pairs:
        for side, text in enumerate(pair):
            for word in _WORD.findall(text.replace("\u2019", "'")):
                if word not in cache:
                    cache[word] = _first_token(tokenizer, word, special)
                if cache[word] is not None:
                    counts[side][cache[word]] += 1
    en_ids = sorted(t for t, c in counts[0].items() if c >= min_count and t not in counts[1])
    es_ids = sorted(t for t, c in counts[1].items() if c >= min_count and t not in counts[0])
    if not en_ids or not es_ids:
        raise ConfigError(f"{call}(): no token occurs at least min_count={min_count} times on one side and never on "
                          f"the other (English ids: {len(en_ids)}, Spanish ids: {len(es_ids)}, over {len(pairs)} "
                          f"pairs); lower min_count, pass more pairs, or check that the tokenizer knows the words")
    return en_ids, es_ids


def read_en_es_pairs(path) -> list[tuple[str, str]]:
    """(English, Spanish) pairs from a JSONL file, one ``{"en": ..., "es": ...}`` object a line (the bundled file's
    format; other keys such as ``"topic"`` are ignored), read as prompt files are
    (:func:`workbench.prompts.jsonl_records`: at most 64 MiB, a byte-order mark dropped). Every line must carry both
    sides as non-empty strings: a line with one side missing (unpaired data) is refused with its line number, before
    anything is computed.

    Example: ``read_en_es_pairs("my-pairs.jsonl")  # lines of {"en": ..., "es": ...}``"""
    from pathlib import Path

    from workbench.prompts import jsonl_records

    call = "read_en_es_pairs"
    path = Path(path)
    pairs = []
    for number, record in jsonl_records(call, path):
        sides = [record.get(k) if isinstance(record, dict) else None for k in ("en", "es")]
        if not all(isinstance(s, str) and s.strip() for s in sides):
            raise config_error(call, f"{path.name} line {number}",
                               'a pair {"en": non-empty text, "es": non-empty text}', json.dumps(record)[:80])
        pairs.append((sides[0], sides[1]))
    if len(pairs) < 2:
        raise config_error(call, "path", "a file with at least 2 pairs", f"{len(pairs)} pairs in {path}")
    return pairs


def language_margin(logits, en_ids: Sequence[int], es_ids: Sequence[int]):
    """``[B]`` M = Σ p(Spanish tokens) − Σ p(English tokens) of next-token ``logits`` ``[B, V]`` (softmax over the
    whole vocabulary), the Neural FOXP2 margin; in [−1, 1], positive when Spanish-marking tokens are more likely.

    Example: ``language_margin(last_logits(lm, tokens), en_ids, es_ids)``"""
    from workbench.intervene.readout import token_set_margin

    return token_set_margin(logits, es_ids, en_ids)


# PhotonTJ/NeuralFoxP2 neural_foxp2/languages.py, LANGUAGE_REGISTRY["spanish"].unicode_ranges
SPANISH_UNICODE_RANGES: tuple[tuple[int, int], ...] = ((0x00C0, 0x00FF), (0x0100, 0x024F))


def unicode_token_ids(tokenizer, ranges: Sequence[tuple[int, int]] = SPANISH_UNICODE_RANGES
                      ) -> tuple[list[int], list[int]]:
    """(English ids, target ids) by script, as PhotonTJ/NeuralFoxP2 neural_foxp2/data.py, build_language_token_sets
    (with languages.py, LanguageConfig.is_target_token) builds them: over ids ``0 .. tokenizer.vocab_size − 1`` (added
    tokens beyond ``vocab_size`` are not looked at), the RAW token string ``tokenizer.convert_ids_to_tokens(id)`` is a
    target token when any character's code point lies in one of ``ranges`` (Spanish: U+00C0–00FF, U+0100–024F), else
    an English token when every character is ASCII and at least one is a letter (``str.isalpha``).

    Consequences of reading raw token strings, kept as the reference has them: a byte-level BPE's space marker "Ġ" is
    U+0120 (inside U+0100–024F), so every space-prefixed token of such a tokenizer (Llama 3, SmolLM2, GPT-2) counts as
    target; SentencePiece's "▁" (U+2581) is neither ASCII nor in range, so Gemma's space-prefixed English words count
    as neither. Both lists sorted; a :class:`ConfigError` when either is empty.

    Example: ``en_ids, target_ids = unicode_token_ids(lm.tokenizer)``"""
    call = "unicode_token_ids"
    if not hasattr(tokenizer, "convert_ids_to_tokens") or not isinstance(getattr(tokenizer, "vocab_size", None), int):
        raise config_error(call, "tokenizer", "a Hugging Face tokenizer (vocab_size, convert_ids_to_tokens)", tokenizer)
    if not ranges or not all(isinstance(r, (tuple, list)) and len(r) == 2 and r[0] <= r[1] for r in ranges):
        raise config_error(call, "ranges", "a non-empty sequence of (first, last) code points", ranges)
    tokens = tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))
    en_ids, tgt_ids = [], []
    for tok_id, tok in enumerate(tokens):
        if tok is None:
            continue
        if any(any(lo <= ord(ch) <= hi for lo, hi in ranges) for ch in tok):
            tgt_ids.append(tok_id)
        elif all(ch.isascii() for ch in tok) and any(ch.isalpha() for ch in tok):
            en_ids.append(tok_id)
    if not en_ids or not tgt_ids:
        raise ConfigError(f"{call}(): the vocabulary has no target-script or no ASCII-letter token (English ids: "
                          f"{len(en_ids)}, target ids: {len(tgt_ids)} over {tokenizer.vocab_size} ids)")
    return en_ids, tgt_ids
