"""Shared fixtures: tiny random Llamas built offline in code, and the real bundled model (for ``slow`` tests).

Fixtures only: the builders they call (tokenizers, ``tiny_llama``, word lists) live in tests/helpers.py, which tests
import as ``from tests.helpers import ...``.
"""

import pytest
import torch

import workbench
from tests.helpers import (
    device_under_test,
    en_es_words,
    ioi_words,
    recall_words,
    sentiment_words,
    tiny_llama,
    word_model,
    word_tokenizer,
)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device under test: ``$WORKBENCH_TEST_DEVICE`` (``cuda`` in benchmarks/gpu/run.py), else the CPU. The
    tiny-model fixtures load there; tests that build tensors put them there with ``device=device``."""
    return device_under_test()


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


@pytest.fixture(scope="session")
def tiny_lang_model(tmp_path_factory):
    """4 layers, a tokenizer knowing the English/Spanish pairs (language steering)."""
    torch.set_num_threads(1)
    return word_model(tmp_path_factory.mktemp("tiny-lang"), en_es_words(), 4)


@pytest.fixture(scope="session")
def tiny_sentiment_model(tmp_path_factory):
    """3 layers, a tokenizer knowing the sentiment data (Steer2Edit)."""
    torch.set_num_threads(1)
    return word_model(tmp_path_factory.mktemp("tiny-sentiment"), sentiment_words(), 3)


@pytest.fixture(scope="session")
def tiny_recall_model(tmp_path_factory):
    """2 layers, a tokenizer knowing the copy/recall prompts (token maps)."""
    torch.set_num_threads(1)
    return word_model(tmp_path_factory.mktemp("tiny-recall"), recall_words(), 2)


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
