"""IOI prompt pairs: determinism, pair structure, balance, the single-token name filter, argument errors."""

import re
from collections import Counter

import pytest
import torch

from workbench.errors import ConfigError
from workbench.tasks import NAMES, OBJECTS, PLACES, TEMPLATES, VARIANTS, PatchPair, ioi_pairs, single_token_names

WORD_NAMES = NAMES[:10]  # the only names the word tokenizer knows; the others become <unk>


@pytest.fixture(scope="module")
def word_tokenizer():
    """A word-level tokenizer (built offline) whose vocabulary holds every template word and 10 of the names."""
    from tests.helpers import ioi_words
    from tests.helpers import word_tokenizer as build

    return build(ioi_words())


def test_constants_are_large_enough():
    assert len(TEMPLATES) >= 12 and len(set(TEMPLATES)) == len(TEMPLATES)
    assert len(NAMES) >= 40 and len(set(NAMES)) == len(NAMES)
    assert len(PLACES) >= 10 and len(OBJECTS) >= 10
    for template in TEMPLATES:  # every name slot follows a space, so names are always " " + name tokens
        assert not template.startswith("{") and all(template.count(s) == 1 for s in ("{A}", "{B}", "{S}"))
        assert template.endswith(" to")


def test_name_filter_keeps_single_known_tokens(word_tokenizer):
    assert single_token_names(word_tokenizer) == WORD_NAMES
    assert {p.answer.strip() for p in ioi_pairs(word_tokenizer, 60)} <= set(WORD_NAMES)


def test_pairs_are_deterministic_per_seed(word_tokenizer):
    assert ioi_pairs(word_tokenizer, 30, seed=3) == ioi_pairs(word_tokenizer, 30, seed=3)
    assert ioi_pairs(word_tokenizer, 30, seed=3) != ioi_pairs(word_tokenizer, 30, seed=4)
    assert ioi_pairs(word_tokenizer, 10, seed=3) == ioi_pairs(word_tokenizer, 30, seed=3)[:10]


def test_pair_structure(word_tokenizer):
    pairs = ioi_pairs(word_tokenizer, 56, seed=1)
    for p in pairs:
        assert isinstance(p, PatchPair) and p.variant in VARIANTS
        io, s = p.answer.strip(), p.counterfactual.strip()
        assert p.answer == " " + io and p.counterfactual == " " + s and io != s
        base_first = (io, s) if p.variant == "ABB->BAB" else (s, io)
        source_first = base_first[::-1]
        template = TEMPLATES[p.template]
        pattern = re.escape(template).replace(r"\{A\}", "(\\w+)").replace(r"\{B\}", "(\\w+)")
        pattern = pattern.replace(r"\{S\}", "(\\w+)").replace(r"\{place\}", "(.+?)").replace(r"\{object\}", "(.+?)")
        mb, ms = re.fullmatch(pattern, p.base), re.fullmatch(pattern, p.source)
        assert mb and ms, (template, p)
        # the groups in template slot order
        order = [m.group(0) for m in re.finditer(r"\{(A|B|S|place|object)\}", template)]
        gb = dict(zip(order, mb.groups()))
        gs = dict(zip(order, ms.groups()))
        assert (gb["{A}"], gb["{B}"]) == base_first and (gs["{A}"], gs["{B}"]) == source_first
        assert gb["{S}"] == gs["{S}"] == s  # the subject is repeated; IO is the answer in both prompts
        assert gb["{place}"] == gs["{place}"] in PLACES and gb["{object}"] == gs["{object}"] in OBJECTS
        enc = lambda t: word_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert len(enc(p.base)) == len(enc(p.source))


def test_base_and_source_differ_only_in_first_two_names(word_tokenizer):
    enc = lambda t: word_tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    for p in ioi_pairs(word_tokenizer, 28, seed=2):
        b, s = enc(p.base), enc(p.source)
        diff = [i for i, (x, y) in enumerate(zip(b, s)) if x != y]
        assert len(diff) == 2, p
        i, j = diff
        assert (b[i], b[j]) == (s[j], s[i])
        assert {b[i], b[j]} == {enc(p.answer)[0], enc(p.counterfactual)[0]}


def test_variants_answer_and_counterfactual(word_tokenizer):
    for p in ioi_pairs(word_tokenizer, 40, seed=5):
        io, s = p.answer.strip(), p.counterfactual.strip()
        base_names = re.findall("|".join(WORD_NAMES), p.base)
        expected = [io, s, s] if p.variant == "ABB->BAB" else [s, io, s]
        assert base_names == expected, p
        src_names = re.findall("|".join(WORD_NAMES), p.source)
        assert src_names == ([s, io, s] if p.variant == "ABB->BAB" else [io, s, s])


def test_canonical_example(word_tokenizer):
    p = ioi_pairs(word_tokenizer, 1, seed=0)[0]
    assert p.template == 0 and p.variant == "ABB->BAB"
    example = TEMPLATES[0].format(A="Mary", B="John", S="John", place="store", object="a drink")
    assert example == "When Mary and John went to the store, John gave a drink to"


def test_templates_and_variants_balanced(word_tokenizer):
    n_t = len(TEMPLATES)
    pairs = ioi_pairs(word_tokenizer, 4 * n_t, seed=0)
    assert Counter(p.template for p in pairs) == {t: 4 for t in range(n_t)}
    assert Counter((p.template, p.variant) for p in pairs) == {(t, v): 2 for t in range(n_t) for v in VARIANTS}
    some = ioi_pairs(word_tokenizer, 7, seed=0, templates=[3, 5])
    assert Counter(p.template for p in some) == {3: 4, 5: 3}
    assert [p.template for p in some] == [3, 5, 3, 5, 3, 5, 3]
    assert abs(sum(p.variant == VARIANTS[0] for p in some) - 3.5) <= 0.5
    only = ioi_pairs(word_tokenizer, 5, variants=("BAB->ABB",))
    assert {p.variant for p in only} == {"BAB->ABB"}


def test_char_tokenizer_has_no_single_token_names(tiny_model):
    with pytest.raises(ConfigError, match="single token"):
        ioi_pairs(tiny_model.tokenizer, 4)


@pytest.mark.parametrize("kwargs, param", [
    (dict(n=0), "n"), (dict(n=-1), "n"), (dict(n=2.0), "n"), (dict(n=True), "n"),
    (dict(n=2, seed="x"), "seed"),
    (dict(n=2, templates=[len(TEMPLATES)]), "templates"), (dict(n=2, templates=[-1]), "templates"),
    (dict(n=2, templates=[]), "templates"), (dict(n=2, templates=[1, 1]), "templates"),
    (dict(n=2, variants=("ABB->ABB",)), "variants"), (dict(n=2, variants="ABB->BAB"), "variants"),
    (dict(n=2, variants=()), "variants"),
])
def test_bad_arguments_name_the_parameter(word_tokenizer, kwargs, param):
    with pytest.raises(ConfigError, match=rf"ioi_pairs\(\): parameter '{param}'"):
        ioi_pairs(word_tokenizer, **kwargs)


@pytest.mark.slow
def test_real_model_does_ioi(real_model):
    """SmolLM2-135M prefers the IO over the subject: mean logit(answer) - logit(counterfactual) > 0 over 64 bases."""
    lm = real_model
    pairs = ioi_pairs(lm.tokenizer, 64, seed=0)
    tok = lambda t: lm.tokenizer(t, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    by_length = {}  # prompts of one token length batch without padding
    for p in pairs:
        by_length.setdefault(len(lm.tokenizer(p.base)["input_ids"]), []).append(p)
    diffs = []
    with torch.no_grad():
        for group in by_length.values():
            for start in range(0, len(group), 32):
                batch = group[start:start + 32]
                logits = lm.model(lm.model.to_tokens([p.base for p in batch]))[:, -1]
                for row, p in zip(logits, batch):
                    diffs.append(float(row[tok(p.answer)] - row[tok(p.counterfactual)]))
    assert len(diffs) == 64 and sum(diffs) / len(diffs) > 0
