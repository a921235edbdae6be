"""Shared fixtures: a tiny random Llama built offline in code, and the real bundled model (for ``slow`` tests)."""

import pytest
import torch

import workbench

TINY_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3


def _char_tokenizer():
    """A character-level WordLevel tokenizer (printable ASCII), built without any download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + [chr(c) for c in range(32, 127)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def word_tokenizer(words):
    """A word-level tokenizer (whitespace/punctuation split) knowing ``words``; anything else is <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(TINY_SPECIALS + sorted(set(words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def ioi_words():
    """Every word of the IOI templates, places, objects and the first 10 names."""
    import re

    from workbench.tasks import NAMES, OBJECTS, PLACES, TEMPLATES

    return re.findall(r"\w+|[^\w\s]+", " ".join(TEMPLATES + PLACES + OBJECTS + NAMES[:10]))


def tiny_llama(folder, tokenizer=None, **overrides):
    """Save a random tiny Llama (seed 0; ``overrides`` change the LlamaConfig) and a tokenizer (default: the char
    tokenizer); load it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(LlamaConfig(**(config | overrides))).save_pretrained(folder)
    (tokenizer or _char_tokenizer()).save_pretrained(folder)
    return workbench.load_model(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random Llama (d_model 32, 4 heads, 2 KV heads) saved to a folder and loaded by ``load_model``.

    Saved and reloaded (not passed in memory) because the bridge fails on an in-memory tokenizer (MODELS.md), and so
    that the local-folder path of ``load_model`` is exercised. Sets torch to one thread: at d_model 32 intra-op
    threads only add overhead, and on a busy 2-core machine their barriers made each tiny forward ~1000x slower.
    """
    torch.set_num_threads(1)
    lm = tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    assert int(lm.model.to_tokens("ab")[0, 0]) == 1, "the bridge must prepend BOS"
    return lm


@pytest.fixture(scope="session")
def tiny_ioi_model(tmp_path_factory):
    """The tiny Llama with a word-level tokenizer in which IOI names are single tokens (for patching analyses)."""
    torch.set_num_threads(1)
    return tiny_llama(tmp_path_factory.mktemp("tiny-ioi"), tokenizer=word_tokenizer(ioi_words()))


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]+", text)


def en_es_words():
    """Every word and punctuation mark of the bundled English/Spanish pairs."""
    from workbench.tasks.language import load_en_es_pairs

    return _words(" ".join(en + " " + es for en, es in load_en_es_pairs()))


def sentiment_words():
    """Every word of the bundled sentiment pairs, prompts and lexicon, and of the prose passages (utility text)."""
    from workbench.prompts import default_prompts
    from workbench.tasks.sentiment import sentiment_lexicon, sentiment_pairs, sentiment_prompts

    pos, neg = sentiment_lexicon()
    return _words(" ".join([p + " " + n for p, n in sentiment_pairs()] + sentiment_prompts()
                           + default_prompts("prose") + sorted(pos | neg) + ["Overall", "it", "was"]))


def _word_model(tmp_path_factory, name: str, words: list[str], n_layers: int):
    """A tiny Llama with ``n_layers`` layers whose word-level tokenizer knows ``words``."""
    torch.set_num_threads(1)
    return tiny_llama(tmp_path_factory.mktemp(name), tokenizer=word_tokenizer(words),
                      vocab_size=len(set(words)) + len(TINY_SPECIALS), num_hidden_layers=n_layers)


@pytest.fixture(scope="session")
def tiny_lang_model(tmp_path_factory):
    """4 layers, a tokenizer knowing the English/Spanish pairs (language steering)."""
    return _word_model(tmp_path_factory, "tiny-lang", en_es_words(), 4)


@pytest.fixture(scope="session")
def tiny_sentiment_model(tmp_path_factory):
    """3 layers, a tokenizer knowing the sentiment data (Steer2Edit)."""
    return _word_model(tmp_path_factory, "tiny-sentiment", sentiment_words(), 3)


def recall_words():
    """Every word of the copy/recall templates and word lists, the IOI words and the token-map example prompts."""
    from workbench.tasks import recall
    from workbench_analyses.token_maps import EXAMPLES

    return ioi_words() + _words(" ".join(recall.SECRET_TEMPLATES + recall.LIST_TEMPLATES + recall.SECRET_WORDS
                                         + recall.LIST_ITEMS + EXAMPLES))


@pytest.fixture(scope="session")
def tiny_recall_model(tmp_path_factory):
    """2 layers, a tokenizer knowing the copy/recall prompts (token maps)."""
    return _word_model(tmp_path_factory, "tiny-recall", recall_words(), 2)


@pytest.fixture
def all_threads():
    """Every core for one test on a real model (the tiny-model fixtures set torch to one thread for the session)."""
    import os

    old = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2-135M (converted once into the cache); use only in tests marked ``slow``."""
    return workbench.load_model()
