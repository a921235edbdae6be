"""Indirect-object identification (IOI) prompt pairs for activation patching.

The task (Wang et al. 2023) and the pair design for the IOI *position* feature follow Makelov et al. 2024, "Is This
the Subspace You Are Looking for?". An IOI prompt names two people, repeats one of them (the subject, S) and ends
where the other one (the indirect object, IO) should come next::

    When Mary and John went to the store, John gave a drink to      -> " Mary"

In an **ABB** prompt the IO is named first ("Mary and John ... John"), in a **BAB** prompt second ("John and Mary ...
John"). A pair holds a base prompt and a source prompt with the same names, template, place and object, and the
first two names swapped, so the two differ only in *where* the IO stands:

- ``"ABB->BAB"``: base ABB, source BAB;
- ``"BAB->ABB"``: base BAB, source ABB.

Both prompts of a pair have the same correct answer (the IO). Transplanting the position feature from the source
into the base run should make the base predict the subject instead: ``PatchPair.answer`` is the IO token text and
``PatchPair.counterfactual`` the S token text, each with its leading space (" Mary", " John").

Templates, names, places and objects were written for this project. Names are kept only where ``" " + name`` is one
token of the given tokenizer (and not its unknown token), so base and source always have the same token length, and
the answer and counterfactual are single next tokens; :func:`ioi_pairs` checks the lengths anyway.

Train/test split as the paper's code (data_utils.py): ``ioi_pairs(..., half="train")`` draws from the first half of
the names, places and objects and the first ⌈T/2⌉ templates, ``half="test"`` from the other halves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from workbench.errors import ConfigError, config_error
from workbench.validation import check_int, is_int

VARIANTS = ("ABB->BAB", "BAB->ABB")

# Slots: {A} and {B} are the first two names in order, {S} the repeated subject, {place} and {object}. Every name
# slot follows a space (no template starts with a name), so a name is always the token of " " + name.
TEMPLATES: list[str] = [
    "When {A} and {B} went to the {place}, {S} gave {object} to",
    "After {A} and {B} arrived at the {place}, {S} handed {object} to",
    "While {A} and {B} were working at the {place}, {S} passed {object} to",
    "Then, {A} and {B} had a long day at the {place}. {S} sent {object} to",
    "Later {A} and {B} met at the {place}, and {S} offered {object} to",
    "When {A} and {B} got to the {place}, {S} showed {object} to",
    "Yesterday {A} and {B} visited the {place}, and {S} gave {object} back to",
    "At the {place}, {A} and {B} talked for hours. Then {S} lent {object} to",
    "During the party at the {place}, {A} and {B} danced, and then {S} gave {object} to",
    "Once {A} and {B} had left the {place}, {S} mailed {object} to",
    "On a trip to the {place}, {A} and {B} had an argument, so {S} returned {object} to",
    "The {place} was busy when {A} and {B} came in, and {S} sold {object} to",
    "The friends {A} and {B} spent the evening at the {place}. {S} gave {object} to",
    "After lunch, {A} and {B} walked to the {place}, where {S} handed {object} to",
]

NAMES: list[str] = [
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David", "Anna", "Michael", "Laura", "Daniel",
    "Kate", "Paul", "Lisa", "Mark", "Rachel", "Peter", "Emily", "Tom", "Jessica", "Chris", "Amy", "Steve",
    "Helen", "Brian", "Susan", "Kevin", "Linda", "Jason", "Karen", "Eric", "Nancy", "Ryan", "Julia", "Adam",
    "Rose", "Jack", "Claire", "Sam", "Grace", "Henry", "Lucy", "George", "Jane", "Frank", "Ruth", "Victor",
    "Diana", "Simon", "Maria", "Luke", "Sophie", "Oscar", "Ellen", "Andrew",
]

PLACES: list[str] = [
    "store", "park", "school", "office", "restaurant", "library", "hospital", "station", "beach", "market",
    "museum", "garden", "cafe", "gym", "airport", "bakery",
]

OBJECTS: list[str] = [
    "a drink", "a book", "the keys", "a letter", "a gift", "a ring", "a bag", "an apple", "a ball", "a map",
    "a coin", "a cake", "the tickets", "a necklace", "a basket", "a phone",
]

_RETRIES = 100  # draws per pair before giving up on a base/source token-length mismatch
HALVES = ("train", "test")


def split_templates(half: str) -> list[int]:
    """The template indices of ``half``: the first ⌈T/2⌉ for ``"train"``, the rest for ``"test"`` (the reference's
    data_utils.py gives its 3 templates as ``TEMPLATES[:2]`` / ``TEMPLATES[2:]``).

    Example: ``split_templates("train")  # the first half of the template indices``"""
    if half not in HALVES:
        raise config_error("split_templates", "half", f"one of {list(HALVES)}", half)
    cut = -(-len(TEMPLATES) // 2)
    return list(range(cut)) if half == "train" else list(range(cut, len(TEMPLATES)))


def _half(items: Sequence[str], half: str | None) -> list[str]:
    """The first (``"train"``) or second (``"test"``) half of ``items`` (``items[:n // 2]`` / ``items[n // 2:]``, as
    data_utils.py splits names, objects and places); everything for None."""
    if half is None:
        return list(items)
    cut = len(items) // 2
    return list(items[:cut]) if half == "train" else list(items[cut:])


@dataclass(frozen=True)
class PatchPair:
    """One base/source prompt pair for patching the IOI position feature.

    ``answer``: the base prompt's correct next token text (the IO, e.g. " Mary"; also the source's).
    ``counterfactual``: what the base run should predict once the position feature comes from the source (the
    subject, e.g. " John"). ``template``: index into :data:`TEMPLATES`. ``variant``: ``"ABB->BAB"`` or
    ``"BAB->ABB"`` (base order -> source order).

    Example: ``pair: PatchPair = ioi_pairs(lm.tokenizer, 8)[0]; pair.base, pair.answer, pair.counterfactual``"""

    base: str
    source: str
    answer: str
    counterfactual: str
    template: int
    variant: str


def ioi_prompt(template: int, order: str, io: str, s: str, place: str, obj: str) -> str:
    """The IOI prompt of ``TEMPLATES[template]`` with IO ``io`` and subject ``s``; ``order`` is "ABB" or "BAB".

    Example: ``ioi_prompt(0, "ABB", "Mary", "John", "store", "a drink")``"""
    if order not in ("ABB", "BAB"):
        raise config_error("ioi_prompt", "order", "'ABB' or 'BAB'", order)
    check_int("ioi_prompt", "template", template, low=0, high=len(TEMPLATES), high_open=True)
    a, b = (io, s) if order == "ABB" else (s, io)
    return TEMPLATES[template].format(A=a, B=b, S=s, place=place, object=obj)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_names(tokenizer, names: Sequence[str] = NAMES) -> list[str]:
    """The names whose ``" " + name`` is exactly one token of ``tokenizer`` (and not its unknown token), in order.

    Example: ``single_token_names(lm.tokenizer)[:5]``"""
    unk = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for name in names:
        ids = _ids(tokenizer, " " + name)
        if len(ids) == 1 and (unk is None or ids[0] != unk):
            kept.append(name)
    return kept


def ioi_pairs(tokenizer, n: int, *, seed: int = 0, templates: list[int] | None = None,
              variants: Sequence[str] = VARIANTS, half: str | None = None) -> list[PatchPair]:
    """``n`` IOI base/source pairs, deterministic for ``seed``.

    Pair ``i`` uses template ``templates[i % T]`` (all of :data:`TEMPLATES` by default), so the templates are used
    equally (within one when ``T`` does not divide ``n``); each template takes the variants in turn, and the turn
    is offset per template so that any prefix of the list is balanced across variants too. Names (two distinct
    single-token names), place and object are drawn with ``random.Random(seed)``.

    ``half``: ``"train"`` or ``"test"`` draws only from that half of the single-token names, the places, the objects
    and the templates (:func:`split_templates`), as the reference's data_utils.py builds ``train_distribution`` /
    ``test_distribution``: the two halves share nothing, so test numbers are out of distribution. ``templates``, if
    given with ``half``, must lie in that half.

    Example: ``ioi_pairs(lm.tokenizer, 64, seed=0, half="train")``"""
    call = "ioi_pairs"
    check_int(call, "n", n, low=1)
    check_int(call, "seed", seed)
    if half is not None and half not in HALVES:
        raise config_error(call, "half", f"None or one of {list(HALVES)}", half)
    allowed_ids = split_templates(half) if half is not None else list(range(len(TEMPLATES)))
    allowed_templates = f"None or a non-empty list of distinct indices in {allowed_ids}"
    if templates is None:
        chosen = allowed_ids
    else:
        if isinstance(templates, (str, bytes)) or not isinstance(templates, Sequence) or not templates:
            raise config_error(call, "templates", allowed_templates, templates)
        chosen = list(templates)
        bad = [t for t in chosen if not is_int(t) or t not in allowed_ids]
        if bad or len(set(chosen)) != len(chosen):
            raise config_error(call, "templates", allowed_templates, templates)
    allowed_variants = f"a non-empty sequence of distinct values from {list(VARIANTS)}"
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence) or not variants:
        raise config_error(call, "variants", allowed_variants, variants)
    if any(v not in VARIANTS for v in variants) or len(set(variants)) != len(variants):
        raise config_error(call, "variants", allowed_variants, variants)
    if not callable(tokenizer):
        raise config_error(call, "tokenizer", "a Hugging Face tokenizer (callable on a string)", tokenizer)

    names = _half(single_token_names(tokenizer), half)
    places, objects = _half(PLACES, half), _half(OBJECTS, half)
    if len(names) < 2:
        where = "" if half is None else f" in the {half} half"
        raise ConfigError(f"{call}(): the tokenizer makes only {len(names)} of the {len(NAMES)} names a single token "
                          f"with a leading space{where} (kept: {names}); IOI pairs need at least 2. Names are "
                          f"checked as tokenizer(' ' + name, add_special_tokens=False)['input_ids'].")

    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        slot, rnd = i % len(chosen), i // len(chosen)
        template = chosen[slot]
        variant = variants[(rnd + slot) % len(variants)]
        base_order, source_order = variant.split("->")
        for _ in range(_RETRIES):
            io, s = rng.sample(names, 2)
            place, obj = rng.choice(places), rng.choice(objects)
            base = ioi_prompt(template, base_order, io, s, place, obj)
            source = ioi_prompt(template, source_order, io, s, place, obj)
            if len(_ids(tokenizer, base)) == len(_ids(tokenizer, source)):
                break
        else:
            raise ConfigError(f"{call}(): template {template} gave base and source prompts of different token "
                              f"lengths in {_RETRIES} draws (last: {base!r} vs {source!r})")
        pairs.append(PatchPair(base=base, source=source, answer=" " + io, counterfactual=" " + s,
                               template=template, variant=variant))
    return pairs
