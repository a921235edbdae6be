"""Prompt sets: the bundled default passages, and user files (.txt one per line, .jsonl with a "text" field)."""

from __future__ import annotations

import json
import re
import unicodedata
from importlib import resources
from pathlib import Path

from workbench.errors import ConfigError, config_error

MAX_PROMPT_FILE_BYTES = 64 * 2**20


def _default_records() -> list[dict]:
    text = resources.files("workbench.data").joinpath("default_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def default_prompts(category: str | None = None) -> list[str]:
    """The 232 English passages written for this project, or those of one ``category`` (see :func:`categories`).

    Example: ``texts = default_prompts("code")  # or default_prompts() for all 232``"""
    records = _default_records()
    if category is not None and category not in categories():
        raise config_error("default_prompts", "category", f"None or one of {categories()}", category)
    return [r["text"] for r in records if category is None or r["category"] == category]


def categories() -> list[str]:
    """Categories of the bundled passages (prose, code, dialogue, maths, ...), in file order.

    Example: ``{c: len(default_prompts(c)) for c in categories()}``"""
    return list(dict.fromkeys(r["category"] for r in _default_records()))


def read_prompts(path: str | Path) -> list[str]:
    """Read a prompt file; errors name the file, the line and what was expected.

    Example: ``read_prompts("prompts.txt")  # or a .jsonl of {"text": ...}``"""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"read_prompts(): parameter 'path' must be an existing file; received {str(path)!r}")
    return parse_prompts(str(path), _read_bytes("read_prompts", path))


def parse_prompts(name: str, data: bytes, *, max_bytes: int = MAX_PROMPT_FILE_BYTES) -> list[str]:
    """Prompts from the bytes of a file called ``name`` (an upload in the dashboard): .txt one per non-blank line,
    .jsonl one ``{"text": ...}`` object per line. Refused with a message naming the file: another extension, more
    than ``max_bytes``, binary (NUL bytes) or non-UTF-8 content, a bad JSONL line (its number), no prompts.

    Example: ``parse_prompts("upload.txt", Path("prompts.txt").read_bytes())  # one prompt per non-blank line``"""
    call = "read_prompts"
    suffix = Path(name).suffix
    if suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"{call}(): parameter 'path' must end in .txt or .jsonl; received {Path(name).name!r}")
    lines = _decode(call, name, data, max_bytes)
    prompts = _jsonl(name, lines) if suffix == ".jsonl" else [line for line in lines if _visible(line)]
    if not prompts:
        raise ConfigError(f"{call}(): {name} holds no prompts")
    return prompts


def _read_bytes(call: str, path: Path) -> bytes:
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise ConfigError(f"{call}(): {path} is {_size(path.stat().st_size)}, over the "
                          f"{_size(MAX_PROMPT_FILE_BYTES)} limit for a prompt file")
    return path.read_bytes()


def _decode(call: str, name: object, data: bytes, max_bytes: int = MAX_PROMPT_FILE_BYTES) -> list[str]:
    """The lines of UTF-8 text ``data`` under the size limit; errors name the call and the file."""
    if len(data) > max_bytes:
        raise ConfigError(f"{call}(): {name} is {_size(len(data))}, over the {_size(max_bytes)} limit for a prompt "
                          f"file")
    if b"\x00" in data:
        raise ConfigError(f"{call}(): {name} is a binary file, not text")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark (Windows editors write one) is not text
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{call}(): {name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return _LINE_BREAK.split(text.removesuffix("\n").removesuffix("\r"))


# Lines end at \n, \r\n or \r only (the JSON Lines rule): str.splitlines would also split at \x0b, \x0c, \x1c-\x1e,
# \x85, U+2028 and U+2029, which JSON allows unescaped inside a string, so a valid .jsonl line would be cut in two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _visible(text: str) -> bool:
    """Whether ``text`` has a character that is neither whitespace nor an invisible format character (a stray
    byte-order mark U+FEFF, a zero-width space U+200B): a line of those alone is blank, not a prompt."""
    return any(not (c.isspace() or unicodedata.category(c) == "Cf") for c in text)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} bytes"


def _read_lines(call: str, path: Path) -> list[str]:
    """The lines of a UTF-8 text file under the size limit; errors name the call and the file."""
    return _decode(call, path, _read_bytes(call, path))


def _records(call: str, name: object, lines: list[str]):
    """``(line number, parsed object)`` for each non-blank JSONL line."""
    for number, line in enumerate(lines, 1):
        if not _visible(line):
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{call}(): {name}:{number} is not valid JSON ({exc.msg})") from None


def jsonl_records(call: str, path: str | Path) -> list[tuple[int, object]]:
    """``(line number, parsed object)`` of each non-blank line of the JSONL file ``path``, read as every prompt file
    is (at most ``MAX_PROMPT_FILE_BYTES``, 64 MiB; UTF-8, a leading byte-order mark dropped; lines end at \\n,
    \\r\\n or \\r only). Errors are ``ConfigError`` naming ``call``, the file and the line; all lines are parsed
    before anything is returned.

    Example: ``[record["en"] for _, record in jsonl_records("my_reader", "pairs.jsonl")]``"""
    path = Path(path)
    if not path.is_file():
        raise config_error(call, "path", "an existing JSONL file", str(path))
    return list(_records(call, path, _read_lines(call, path)))


def _jsonl(path: object, lines: list[str]) -> list[str]:
    prompts = []
    for number, record in _records("read_prompts", path, lines):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not _visible(record["text"]):
            raise ConfigError(f'read_prompts(): {path}:{number} must be an object with a non-empty "text" string')
        prompts.append(record["text"])
    return prompts


PAIR_SETS = {"instruction": "instruction_pairs.jsonl", "reasoning": "reasoning_pairs.jsonl"}


def bundled_pairs(name: str) -> list[tuple[str, str]]:
    """A bundled (prompt, response) set written for this project: ``"instruction"`` (direct answers to everyday
    requests) or ``"reasoning"`` (multi-step problems answered step by step).

    Example: ``prompt, response = bundled_pairs("reasoning")[0]``"""
    if name not in PAIR_SETS:
        raise config_error("bundled_pairs", "name", f"one of {list(PAIR_SETS)}", name)
    text = resources.files("workbench.data").joinpath(PAIR_SETS[name]).read_text(encoding="utf-8")
    return _pairs(f"bundled:{name}", text.splitlines())


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a JSONL file of ``{"prompt": ..., "response": ...}`` objects (other keys are
    ignored); errors name the file and line.

    Example: ``read_pairs("my-pairs.jsonl")``"""
    path = Path(path)
    if not path.is_file() or path.suffix != ".jsonl":
        raise ConfigError(f"read_pairs(): parameter 'path' must be an existing .jsonl file; received {str(path)!r}")
    return _pairs(str(path), _read_lines("read_pairs", path))


def parse_pairs(name: str, data: bytes, *, max_bytes: int = MAX_PROMPT_FILE_BYTES) -> list[tuple[str, str]]:
    """(prompt, response) pairs from the bytes of a .jsonl file called ``name`` (an upload), refused as
    :func:`parse_prompts` refuses bad files.

    Example: ``parse_pairs("upload.jsonl", Path("my-pairs.jsonl").read_bytes())  # [(prompt, response), ...]``"""
    if Path(name).suffix != ".jsonl":
        raise ConfigError(f"read_pairs(): parameter 'path' must be a .jsonl file; received {Path(name).name!r}")
    return _pairs(name, _decode("read_pairs", name, data, max_bytes))


def _pairs(name: str, lines: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for number, record in _records("read_pairs", name, lines):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("prompt", "response")):
            raise ConfigError(f'read_pairs(): {name}:{number} must be an object with "prompt" and "response" strings')
        if not _visible(record["response"]):
            raise ConfigError(f"read_pairs(): {name}:{number} has an empty response (the loss is on response tokens)")
        pairs.append((record["prompt"], record["response"]))
    if not pairs:
        raise ConfigError(f"read_pairs(): {name} holds no (prompt, response) pairs")
    return pairs
