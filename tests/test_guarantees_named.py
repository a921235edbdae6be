"""README's "What is guaranteed": every promise names at least one test, and every test it names exists — so the
section cannot drift from the suite (a renamed or deleted test fails here)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## What is guaranteed")
    return text[start:text.index("\n## ", start + 10)]


def _promises() -> list[list[str]]:
    """The backticked references of each promise row (the first table of the section)."""
    table = _section().split("| Promise | Checked by |")[1].split("\n\n")[0]
    rows = [line for line in table.strip().splitlines()[1:] if line.startswith("|")]
    return [re.findall(r"`([^`]+)`", row.split("|")[2]) for row in rows]


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def test_every_promise_names_tests_that_exist():
    promises = _promises()
    assert len(promises) >= 15
    for refs in promises:
        current: Path | None = None
        named = 0
        for ref in refs:
            path, _, name = ref.partition("::")
            if path.startswith(("tests/", "benchmarks/")):
                current = ROOT / path.rstrip("/")
                assert current.exists(), f"README names {path}, which does not exist"
                named += path.startswith("tests/")
            elif not path and name:
                assert current is not None and current.is_file(), f"::{name} follows no test file in {refs}"
            else:
                continue  # a code span that is not a reference (a flag, a function)
            if name:
                names = {n for f in ([current] if current.is_file() else current.rglob("test_*.py"))
                         for n in _functions(f)}
                pattern = name.split("[")[0]
                assert fnmatch.filter(names, pattern), f"README names {ref}, not found in {current}"
        assert named, f"a promise names no test: {refs}"
