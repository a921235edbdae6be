"""Copy/recall prompts where the input token that explains the answer is known: the evaluation set of token maps.

Three families, written for this project (templates below, words drawn with a seed):

- ``name``: an IOI sentence (:mod:`workbench.tasks.ioi`); the answer is the indirect object, named once earlier.
- ``secret``: a word is introduced, then asked back ("The secret word is tiger. … The secret word is" → " tiger").
- ``list``: a three-item list, then its first item is asked for.

Every target is one token (``" " + word``) that occurs exactly once in the prompt, so "the right input token" is one
position. Whether the model actually answers with it is checked by the analysis that uses the set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from workbench.errors import config_error
from workbench.tasks.ioi import OBJECTS, PLACES, TEMPLATES, ioi_prompt, single_token_names
from workbench.validation import check_int

FAMILIES = ("name", "secret", "list")

SECRET_TEMPLATES = (
    "The secret word is {w}. Please remember the secret word. The secret word is",
    "The password is {w}. Do not forget the password. The password is",
    "My favourite word is {w}. Tell me my favourite word. My favourite word is",
)
SECRET_WORDS = ("tiger", "apple", "river", "piano", "candle", "rocket", "mirror", "garden", "silver", "dragon",
                "window", "forest", "castle", "pencil", "orange", "violin", "yellow", "planet", "coffee", "bottle")
LIST_TEMPLATES = (
    "I need to buy {a}, {b} and {c}. The first thing I need to buy is",
    "On the table there are {a}, {b} and {c}. The first thing on the table is",
)
LIST_ITEMS = ("apples", "bread", "milk", "eggs", "cheese", "butter", "rice", "sugar", "tea", "coffee", "salt",
              "honey", "fish", "beans", "soap", "water")


@dataclass(frozen=True)
class RecallPrompt:
    """``prompt`` whose correct next token is ``target`` (with its leading space), which occurs once in it.

    Example: ``p: RecallPrompt = recall_prompts(lm.tokenizer, 3)[0]; p.family, p.prompt, p.target``"""

    family: str
    prompt: str
    target: str


def recall_prompts(tokenizer, n: int, *, seed: int = 0) -> list[RecallPrompt]:
    """``n`` prompts, the families in turn (name, secret, list, name, …), deterministic for ``seed``; only words that
    are a single token of ``tokenizer`` are drawn, and a prompt whose target token occurs more than once is redrawn.

    Example: ``recall_prompts(lm.tokenizer, 30, seed=0)``"""
    call = "recall_prompts"
    check_int(call, "n", n, low=1)
    check_int(call, "seed", seed)
    names, words, items = (single_token_names(tokenizer), single_token_names(tokenizer, SECRET_WORDS),
                           single_token_names(tokenizer, LIST_ITEMS))
    if len(names) < 2 or not words or len(items) < 3:
        raise config_error(call, "tokenizer", "a tokenizer with single-token names and words (English BPE)",
                           type(tokenizer).__name__)
    rng = random.Random(seed)
    out: list[RecallPrompt] = []
    while len(out) < n:
        family = FAMILIES[len(out) % len(FAMILIES)]
        if family == "name":
            io, s = rng.sample(names, 2)
            prompt = ioi_prompt(rng.randrange(len(TEMPLATES)), rng.choice(("ABB", "BAB")), io, s, rng.choice(PLACES),
                                rng.choice(OBJECTS))
            target = io
        elif family == "secret":
            target = rng.choice(words)
            prompt = rng.choice(SECRET_TEMPLATES).format(w=target)
        else:
            a, b, c = rng.sample(items, 3)
            prompt, target = rng.choice(LIST_TEMPLATES).format(a=a, b=b, c=c), a
        tid = tokenizer(" " + target, add_special_tokens=False)["input_ids"]
        if tokenizer(prompt, add_special_tokens=False)["input_ids"].count(tid[0]) == 1:
            out.append(RecallPrompt(family, prompt, " " + target))
    return out
