"""English/Spanish task data: the detector on held-out sentences, the bundled pairs, the split, the token sets,
argument errors."""

import json
import re
from importlib import resources

import pytest

from workbench.errors import ConfigError
from workbench.tasks import (
    ENGLISH_STOPWORDS,
    SPANISH_STOPWORDS,
    detect_language,
    en_es_topics,
    language_token_ids,
    load_en_es_pairs,
    spanish_score,
)

# Held-out sentences written for this test (none is in the bundled pairs), some short or with few function words.
HELD_OUT_EN = [
    "I think we should leave early to avoid the traffic.",
    "Could you please pass me the salt and the pepper?",
    "The children were playing in the garden all afternoon.",
    "He has never been to Spain, but he would like to go.",
    "Our neighbours bought a new car last week.",
    "Please remember to lock the door when you go out.",
    "The concert was cancelled because of the heavy rain.",
    "She is reading a novel about a detective in London.",
    "We need more chairs for the party on Saturday.",
    "My phone battery died in the middle of the call.",
    "It's too late to call him now, let's wait until tomorrow.",
    "The river flows slowly through the quiet little town.",
    "Don't forget your keys, they are on the kitchen table.",
    "I really enjoyed the film, especially the ending.",
    "They have been working on this project since January.",
    "How long does it take to get to the station from here?",
    "The cat sleeps on the sofa most of the day.",
    "Learning a new language takes patience and a lot of practice.",
    "Honestly, I didn't expect the exam to be so easy.",
    "Bring a warm jacket, the nights get cold in the mountains.",
    "Which of these two paintings do you prefer?",
    "The bakery opens at seven and sells out quickly.",
    "Running every day slowly improved his health.",
    "Nobody answered when I knocked on the door.",
]
HELD_OUT_ES = [
    "Creo que deberíamos salir temprano para evitar el tráfico.",
    "¿Me pasas la sal y la pimienta, por favor?",
    "Los niños estuvieron jugando en el jardín toda la tarde.",
    "Nunca ha estado en Inglaterra, pero le gustaría ir.",
    "Nuestros vecinos compraron un coche nuevo la semana pasada.",
    "Acuérdate de cerrar la puerta con llave cuando salgas.",
    "El concierto se canceló por culpa de la lluvia.",
    "Está leyendo una novela sobre un detective en Londres.",
    "Necesitamos más sillas para la fiesta del sábado.",
    "Se me acabó la batería del móvil en mitad de la llamada.",
    "Ya es demasiado tarde para llamarlo, esperemos hasta mañana.",
    "El río corre despacio por el pueblo pequeño y tranquilo.",
    "No te olvides las llaves, están encima de la mesa de la cocina.",
    "Me gustó mucho la película, sobre todo el final.",
    "Llevan trabajando en este proyecto desde enero.",
    "¿Cuánto se tarda en llegar a la estación desde aquí?",
    "El gato duerme en el sofá casi todo el día.",
    "Aprender un idioma nuevo requiere paciencia y mucha práctica.",
    "Sinceramente, no esperaba que el examen fuera tan fácil.",
    "Trae una chaqueta de abrigo, por la noche hace frío en la montaña.",
    "¿Cuál de estos dos cuadros prefieres?",
    "La panadería abre a las siete y lo vende todo enseguida.",
    "Correr cada día mejoró poco a poco su salud.",
    "Nadie contestó cuando llamé a la puerta.",
]


def test_held_out_sentences_are_not_in_the_dataset():
    pairs = load_en_es_pairs()
    assert not set(HELD_OUT_EN) & {en for en, _ in pairs}
    assert not set(HELD_OUT_ES) & {es for _, es in pairs}
    assert len(HELD_OUT_EN) >= 20 and len(HELD_OUT_ES) >= 20


def test_detector_is_accurate_on_held_out_sentences():
    right = sum(detect_language(s) == "en" for s in HELD_OUT_EN) + sum(detect_language(s) == "es" for s in HELD_OUT_ES)
    assert right / (len(HELD_OUT_EN) + len(HELD_OUT_ES)) >= 0.95


def test_scores_are_in_unit_interval_and_separate_the_languages():
    en_scores = [spanish_score(s) for s in HELD_OUT_EN]
    es_scores = [spanish_score(s) for s in HELD_OUT_ES]
    assert all(0 < s < 1 for s in en_scores + es_scores)
    assert sum(en_scores) / len(en_scores) < 0.2 and sum(es_scores) / len(es_scores) > 0.8


@pytest.mark.parametrize("text", ["", "   ", "hola", "the cat", "¿Qué tal?", "123 456 789", "!!! ???"])
def test_short_or_empty_text_is_unknown(text):
    assert detect_language(text) == "unknown"


def test_no_evidence_is_unknown_and_scores_one_half():
    assert spanish_score("") == 0.5
    assert detect_language("Zorb quank frimble") == "unknown"


def test_mixed_text_scores_in_between():
    english, spanish = HELD_OUT_EN[2], HELD_OUT_ES[2]  # the same sentence in both languages
    mixed = spanish_score(english + " " + spanish)
    assert spanish_score(english) < mixed < spanish_score(spanish)
    assert 0.25 < mixed < 0.75
    assert 0.25 < spanish_score("I went to the market y compré pan con mi hermana") < 0.75


def test_spanish_characters_and_suffixes_count():
    # no stopwords at all: only the characters and suffixes decide
    assert detect_language("Información rápidamente actualizada, excelente calidad") == "es"
    assert detect_language("Information quickly updated, amazing quality") == "en"
    assert spanish_score("¡Qué día!") > 0.5


def test_stopword_lists_are_large_and_disjoint():
    assert len(SPANISH_STOPWORDS) >= 60 and len(ENGLISH_STOPWORDS) >= 60
    assert not SPANISH_STOPWORDS & ENGLISH_STOPWORDS
    assert all(w == w.lower() for w in SPANISH_STOPWORDS | ENGLISH_STOPWORDS)


def test_bundled_file_is_well_formed():
    text = resources.files("workbench.data").joinpath("en_es_pairs.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) >= 120
    for r in records:
        assert set(r) == {"en", "es", "topic"}
        for side in ("en", "es"):
            assert 8 <= len(re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)*", r[side])) <= 25, r[side]
    assert len(en_es_topics()) >= 12
    open_ended = sum(not r["en"].endswith((".", "?", "!")) for r in records)
    assert open_ended >= len(records) / 2
    assert any(ch in "áéíóúñ¿" for r in records for ch in r["es"])


def test_dataset_pairs_are_unique_and_detected_on_each_side():
    pairs = load_en_es_pairs()
    assert len(pairs) >= 120 and len(set(pairs)) == len(pairs)
    assert len({en for en, _ in pairs}) == len(pairs) and len({es for _, es in pairs}) == len(pairs)
    assert [en for en, _ in pairs if detect_language(en) != "en"] == []
    assert [es for _, es in pairs if detect_language(es) != "es"] == []


def test_split_is_deterministic_disjoint_and_complete():
    all_pairs = load_en_es_pairs()
    train, test = load_en_es_pairs("train"), load_en_es_pairs("test")
    assert train == load_en_es_pairs("train", seed=0) and test == load_en_es_pairs("test")
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(all_pairs)
    assert len(test) == round(0.3 * len(all_pairs))
    assert load_en_es_pairs("test", seed=1) != test
    assert len(load_en_es_pairs("test", test_fraction=0.5)) == round(0.5 * len(all_pairs))


@pytest.mark.parametrize("kwargs, param", [
    (dict(split="dev"), "split"), (dict(split="TRAIN"), "split"), (dict(seed="0"), "seed"),
    (dict(split="train", test_fraction=0.0), "test_fraction"), (dict(split="test", test_fraction=1.0), "test_fraction"),
    (dict(test_fraction=-0.2), "test_fraction"), (dict(test_fraction="0.3"), "test_fraction"),
    (dict(split="test", test_fraction=1e-6), "test_fraction"),
])
def test_load_errors_name_the_parameter(kwargs, param):
    with pytest.raises(ConfigError, match=f"load_en_es_pairs\\(\\): parameter '{param}'"):
        load_en_es_pairs(**kwargs)


@pytest.fixture(scope="module")
def pairs_tokenizer():
    """A word-level tokenizer (built offline) that knows every word of the bundled pairs."""
    from tests.helpers import word_tokenizer

    words = re.findall(r"\w+|[^\w\s]+", " ".join(en + " " + es for en, es in load_en_es_pairs()))
    return word_tokenizer(words)


def test_language_token_ids_are_disjoint_and_language_specific(pairs_tokenizer):
    en_ids, es_ids = language_token_ids(pairs_tokenizer, load_en_es_pairs())
    assert en_ids and es_ids and not set(en_ids) & set(es_ids)
    assert en_ids == sorted(en_ids) and es_ids == sorted(es_ids)
    vocab = pairs_tokenizer.get_vocab()
    for word in ("the", "and", "my"):
        assert vocab[word] in en_ids
    for word in ("que", "el", "los", "más"):
        assert vocab[word] in es_ids
    special = set(pairs_tokenizer.all_special_ids)
    assert not special & (set(en_ids) | set(es_ids))


def test_language_token_ids_min_count(pairs_tokenizer):
    pairs = load_en_es_pairs()
    en1, es1 = language_token_ids(pairs_tokenizer, pairs, min_count=1)
    en5, es5 = language_token_ids(pairs_tokenizer, pairs, min_count=5)
    assert set(en5) < set(en1) and set(es5) < set(es1)
    with pytest.raises(ConfigError, match="min_count=100000"):
        language_token_ids(pairs_tokenizer, pairs, min_count=100000)


def test_language_token_ids_empty_when_tokenizer_knows_no_words():
    from tests.helpers import word_tokenizer

    with pytest.raises(ConfigError, match="language_token_ids"):
        language_token_ids(word_tokenizer(["zzz"]), load_en_es_pairs())


@pytest.mark.parametrize("kwargs, param", [
    (dict(pairs=[]), "pairs"), (dict(pairs="the cat"), "pairs"), (dict(pairs=[("only one",)]), "pairs"),
    (dict(pairs=[("a", 3)]), "pairs"), (dict(min_count=0), "min_count"), (dict(min_count=2.0), "min_count"),
    (dict(min_count=True), "min_count"), (dict(tokenizer=None), "tokenizer"),
])
def test_language_token_ids_errors_name_the_parameter(pairs_tokenizer, kwargs, param):
    call = dict(tokenizer=pairs_tokenizer, pairs=load_en_es_pairs()[:10]) | kwargs
    with pytest.raises(ConfigError, match=f"language_token_ids\\(\\): parameter '{param}'"):
        language_token_ids(call.pop("tokenizer"), call.pop("pairs"), **call)


def test_read_pairs_round_trips_and_refuses_unpaired_lines(tmp_path):
    from workbench.tasks.language import read_en_es_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"en": "one", "es": "uno", "topic": "x"}\n\n{"en": "two", "es": "dos"}\n')
    assert read_en_es_pairs(path) == [("one", "uno"), ("two", "dos")]
    for bad, where in [('{"en": "one"}', "line 2"), ('{"en": "one", "es": " "}', "line 2"),
                       ("not json", "pairs.jsonl:2 is not valid JSON"), ('["one", "uno"]', "line 2")]:
        path.write_text('{"en": "a", "es": "b"}\n' + bad + "\n")
        with pytest.raises(ConfigError, match=where):
            read_en_es_pairs(path)
    path.write_text('{"en": "a", "es": "b"}\n')
    with pytest.raises(ConfigError, match="at least 2 pairs"):
        read_en_es_pairs(path)
    with pytest.raises(ConfigError, match="'path'"):
        read_en_es_pairs(tmp_path / "missing.jsonl")


def test_read_en_es_pairs_reads_as_prompt_files_do(tmp_path):
    """A byte-order mark and CRLF line ends are text conventions, not data; an oversized file is refused before it
    is read (the rules of every prompt and pair file, workbench.prompts.jsonl_records)."""
    from workbench.prompts import MAX_PROMPT_FILE_BYTES
    from workbench.tasks.language import read_en_es_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"en": "one", "es": "uno"}\r\n{"en": "two\xe2\x80\xa8", "es": "dos"}\r\n')
    assert read_en_es_pairs(path) == [("one", "uno"), ("two\u2028", "dos")]
    with open(path, "ab") as handle:
        handle.truncate(MAX_PROMPT_FILE_BYTES + 1)
    with pytest.raises(ConfigError, match=r"is 64\.0 MiB, over the 64\.0 MiB limit"):
        read_en_es_pairs(path)


def test_split_pairs_matches_the_bundled_split():
    from workbench.tasks.language import split_pairs

    pairs = load_en_es_pairs()
    assert split_pairs(pairs, "test", seed=3) == load_en_es_pairs("test", seed=3)
    assert split_pairs(pairs, None) == pairs


def test_language_margin_by_hand():
    import math

    import torch

    from workbench.tasks.language import language_margin

    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), math.log(4.0)]])  # p = [1, 2, 3, 4] / 10
    assert float(language_margin(logits, en_ids=[0, 1], es_ids=[3])[0]) == pytest.approx(0.4 - 0.3)
    assert float(language_margin(logits, en_ids=[3], es_ids=[2])[0]) == pytest.approx(0.3 - 0.4)


def test_unicode_token_ids_on_a_real_vocabulary_and_its_errors(pairs_tokenizer):
    """The reference's script-based sets (parity with PhotonTJ/NeuralFoxP2 data.py, build_language_token_sets, is in
    tests/workbench/intervene/test_language_parity.py); here: named errors for what is not a tokenizer or has no
    target-script token."""
    from workbench.tasks.language import unicode_token_ids

    with pytest.raises(ConfigError, match="unicode_token_ids\\(\\): parameter 'tokenizer'"):
        unicode_token_ids(object())
    with pytest.raises(ConfigError, match="'ranges'"):
        unicode_token_ids(pairs_tokenizer, ranges=[(5, 1)])
    with pytest.raises(ConfigError, match="no target-script"):
        unicode_token_ids(pairs_tokenizer, ranges=[(0x4E00, 0x9FFF)])  # no CJK in an English/Spanish vocabulary
    en, es = unicode_token_ids(pairs_tokenizer)
    assert en and es and not set(en) & set(es)
