"""Prompt sets: the bundled default passages, and user files (.txt one per line, .jsonl with a "text" field)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from workbench.errors import ConfigError

MAX_PROMPT_FILE_BYTES = 64 * 2**20


def default_prompts() -> list[str]:
    """The 232 English passages written for this project (prose, dialogue, code, lists, maths, ...)."""
    text = resources.files("workbench.data").joinpath("default_prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]


def read_prompts(path: str | Path) -> list[str]:
    """Read a prompt file; errors name the file, the line and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"read_prompts(): parameter 'path' must be an existing file; received {str(path)!r}")
    if path.suffix not in (".txt", ".jsonl"):
        raise ConfigError(f"read_prompts(): parameter 'path' must end in .txt or .jsonl; received {path.name!r}")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise ConfigError(f"read_prompts(): {path} is {path.stat().st_size / 2**20:.0f} MiB, over the "
                          f"{MAX_PROMPT_FILE_BYTES // 2**20} MiB limit for a prompt file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"read_prompts(): {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = _jsonl(path, lines) if path.suffix == ".jsonl" else [line for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"read_prompts(): {path} holds no prompts")
    return prompts


def _jsonl(path: Path, lines: list[str]) -> list[str]:
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"read_prompts(): {path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"].strip():
            raise ConfigError(f'read_prompts(): {path}:{number} must be an object with a non-empty "text" string')
        prompts.append(record["text"])
    return prompts
