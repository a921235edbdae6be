"""README.md's Python examples run verbatim, in order, as the one notebook session they describe.

Every ```python block is executed in one shared namespace (later blocks use ``lm``, ``texts``, ``torch`` from earlier
ones) inside a temporary working directory (they write reports/nb, embeddings.npy, my-pairs.jsonl, my-edit), on the
real bundled models. A block that cannot run here is marked in README.md by an HTML comment on the line just before
its fence, ``<!-- readme-test: skip (reason) -->``; the test prints each skipped block with its reason and fails on a
marker that does not sit right before a ```python fence, so the skipped set is exactly what the README marks.
Tracebacks name README.md and its line numbers.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"^<!-- readme-test: skip \((?P<reason>[^)]+)\) -->$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first code line
    code: str
    skip: str | None  # the marker's reason, or None


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of ``text`` in order, with the skip reason of the marker just before each fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = SKIP.match(lines[i - 1].strip()) if i > 0 else None
            blocks.append(Block(i + 2, "\n".join(lines[i + 1:end]) + "\n", marker["reason"] if marker else None))
            i = end
        i += 1
    return blocks


def test_skip_markers_sit_before_python_blocks():
    """Fast check of the markers themselves: each one is directly followed by a ```python fence."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        if "readme-test:" in line:
            assert SKIP.match(line.strip()), f"README.md:{n + 1}: malformed marker {line!r}"
            assert n + 1 < len(lines) and lines[n + 1].strip() == "```python", \
                f"README.md:{n + 1}: a skip marker must be on the line just before a ```python fence"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~2.5 min quiet; the whole README session on two models, 5x under load
def test_readme_python_examples_run(tmp_path, monkeypatch, all_threads):
    import plotly.basedatatypes

    blocks = readme_blocks(README.read_text(encoding="utf-8"))
    marked = sum(1 for line in README.read_text(encoding="utf-8").splitlines() if "readme-test:" in line)
    skipped = [b for b in blocks if b.skip]
    assert len(skipped) == marked, "every skip marker belongs to exactly one ```python block"
    assert len(blocks) > len(skipped), "no README example ran"

    shown = []
    # Figure.show() would open a browser (and wait for it) outside a notebook: render to HTML instead.
    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", lambda fig, *a, **k: shown.append(fig.to_html()))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in blocks:
        if block.skip:
            print(f"README.md:{block.line}: skipped ({block.skip})")
            continue
        start = time.perf_counter()
        # pad with newlines so that tracebacks give README.md's own line numbers
        exec(compile("\n" * (block.line - 1) + block.code, str(README), "exec"), namespace)
        print(f"README.md:{block.line}: ran in {time.perf_counter() - start:.1f} s")
    assert shown, "the README's result.plot().show() rendered nothing"
    assert (tmp_path / "reports" / "nb" / "report.html").is_file() and (tmp_path / "my-edit").exists()
