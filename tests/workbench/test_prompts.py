"""Prompt sets (workbench.prompts): the bundled passages and pairs, prompt and pair files, uploads; errors name the
file, the line and what was expected."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.prompts import (
    bundled_pairs,
    categories,
    default_prompts,
    parse_pairs,
    parse_prompts,
    read_pairs,
    read_prompts,
)


def test_default_prompts_are_many_and_varied():
    prompts = default_prompts()
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    assert any("def " in p for p in prompts) and any("=" in p for p in prompts)


def test_read_prompts_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "other": 1}\n')
    assert read_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "b.jsonl") == ["x", "y"]


@pytest.mark.parametrize("name,content,match", [
    ("empty.txt", "\n\n", "no prompts"),
    ("bad.jsonl", '{"text": "ok"}\nnot json\n', "bad.jsonl:2"),
    ("cols.jsonl", '{"prompt": "x"}\n', '"text"'),
    ("bin.txt", b"\xff\xfe\x00\x01", "binary"),
    ("latin.txt", "caf\xe9\n".encode("latin-1"), "UTF-8"),
    ("x.csv", "a,b\n", ".txt or .jsonl"),
])
def test_read_prompts_errors(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=match):
        read_prompts(path)


def test_parse_uploaded_prompts_and_pairs():
    assert parse_prompts("up.txt", b"one\n\ntwo\n") == ["one", "two"]
    with pytest.raises(ConfigError, match="up.txt is 200 bytes, over the 104 bytes limit"):
        parse_prompts("up.txt", b"x" * 200, max_bytes=104)
    assert parse_pairs("p.jsonl", b'{"prompt": "q", "response": "a"}\n') == [("q", "a")]
    with pytest.raises(ConfigError, match='p.jsonl:1 must be an object with "prompt" and "response"'):
        parse_pairs("p.jsonl", b'{"text": "q"}\n')
    with pytest.raises(ConfigError, match=".jsonl file"):
        parse_pairs("p.txt", b"q")


def test_read_prompts_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="'path'"):
        read_prompts(tmp_path / "nope.txt")


def test_categories_partition_the_default_prompts():
    cats = categories()
    assert {"prose", "code", "maths", "dialogue"} <= set(cats) and len(set(cats)) == len(cats)
    assert sum(len(default_prompts(c)) for c in cats) == len(default_prompts())
    with pytest.raises(ConfigError, match="'category'"):
        default_prompts("poetry-slam")


def test_bundled_pairs_are_distinct_and_named():
    for name in ("instruction", "reasoning"):
        pairs = bundled_pairs(name)
        assert pairs and all(p.strip() and r.strip() for p, r in pairs)
        assert len({p for p, _ in pairs}) == len(pairs)
    with pytest.raises(ConfigError, match="'name'"):
        bundled_pairs("poems")


def test_read_pairs_keeps_order_ignores_other_keys_and_names_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b", "id": 7}) + "\n\n"
                    + json.dumps({"prompt": "c", "response": "d"}) + "\n")
    assert read_pairs(path) == [("a", "b"), ("c", "d")]
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{oops\n")
    with pytest.raises(ConfigError, match=r"p.jsonl:2 is not valid JSON"):
        read_pairs(path)
    with pytest.raises(ConfigError, match="'path'.*existing .jsonl"):
        read_pairs(tmp_path / "p.txt")
