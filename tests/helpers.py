"""Builders shared by the tests (imported as ``from tests.helpers import ...``; conftest.py only holds fixtures)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

import workbench

TINY_SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3
DEVICE_ENV = "WORKBENCH_TEST_DEVICE"  # benchmarks/gpu/run.py sets it to cuda on a lent GPU machine
PLUGIN = Path(__file__).resolve().parent / "plugin" / "wb_weight_norms.py"


def install_fake_plugin(folder: Path, *, entry: str = "weight_norms = wb_weight_norms:ANALYSIS",
                        dist: str = "wb-weight-norms") -> Path:
    """A third-party distribution as pip would leave it in site-packages: the module of CONTRIBUTING.md's worked
    example plus a ``.dist-info`` whose ``entry_points.txt`` lists it in the ``workbench.analyses`` group. Put
    ``folder`` on ``sys.path`` (or ``PYTHONPATH``) and :mod:`importlib.metadata` finds the entry point."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, folder / PLUGIN.name)
    info = folder / "wb_weight_norms-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[workbench.analyses]\n{entry}\n")
    return folder


def char_tokenizer():
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


def device_under_test() -> torch.device:
    """Where the tests put models and tensors: ``$WORKBENCH_TEST_DEVICE`` (``cuda`` in the GPU check), else the CPU."""
    return torch.device(os.environ.get(DEVICE_ENV) or "cpu")


def tiny_llama(folder, tokenizer=None, *, device=None, **overrides):
    """Save a random tiny Llama (seed 0; ``overrides`` change the LlamaConfig) and a tokenizer (default: the char
    tokenizer); load it on ``device`` (default :func:`device_under_test`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(LlamaConfig(**(config | overrides))).save_pretrained(folder)
    (tokenizer or char_tokenizer()).save_pretrained(folder)
    return workbench.load_model(folder, device=device_under_test() if device is None else device)


def word_model(folder, words: list[str], n_layers: int):
    """A tiny Llama with ``n_layers`` layers whose word-level tokenizer knows ``words`` (vocabulary sized to them)."""
    return tiny_llama(folder, tokenizer=word_tokenizer(words), vocab_size=len(set(words)) + len(TINY_SPECIALS),
                      num_hidden_layers=n_layers)


def split_words(text: str) -> list[str]:
    """``text`` split into words and runs of punctuation, as the word-level tokenizer splits it."""
    return re.findall(r"\w+|[^\w\s]+", text)


def ioi_words():
    """Every word of the IOI templates, places, objects and the first 10 names."""
    from workbench.tasks import NAMES, OBJECTS, PLACES, TEMPLATES

    return split_words(" ".join(TEMPLATES + PLACES + OBJECTS + NAMES[:10]))


def en_es_words():
    """Every word and punctuation mark of the bundled English/Spanish pairs."""
    from workbench.tasks.language import load_en_es_pairs

    return split_words(" ".join(en + " " + es for en, es in load_en_es_pairs()))


def sentiment_words():
    """Every word of the bundled sentiment pairs, prompts and lexicon, and of the prose passages (utility text)."""
    from workbench.prompts import default_prompts
    from workbench.tasks.sentiment import sentiment_lexicon, sentiment_pairs, sentiment_prompts

    pos, neg = sentiment_lexicon()
    return split_words(" ".join([p + " " + n for p, n in sentiment_pairs()] + sentiment_prompts()
                                + default_prompts("prose") + sorted(pos | neg) + ["Overall", "it", "was"]))


def recall_words():
    """Every word of the copy/recall templates and word lists, the IOI words and the token-map example prompts."""
    from workbench.tasks import recall
    from workbench_analyses.token_maps import EXAMPLES

    return ioi_words() + split_words(" ".join(recall.SECRET_TEMPLATES + recall.LIST_TEMPLATES + recall.SECRET_WORDS
                                              + recall.LIST_ITEMS + EXAMPLES))


def truncate_file(path: Path, keep: int | None = None) -> None:
    """Cut ``path`` to its first ``keep`` bytes (default: half), as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def flip_last_byte(path: Path) -> None:
    """Same size, different content (the last byte lies in the tensor data of a safetensors file)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def numpy_rankme(z, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al. 2023, eq. 1) of the rows of ``z`` written out with numpy's SVD in float64: an independent
    reference for the library's batched torch version."""
    import numpy as np

    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))
