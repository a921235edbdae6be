"""Hostile files: prompt files, JSONL pair files and matrix files. Each ends in a clean result or a named
WorkbenchError — never another exception, never code execution (a pickle whose unpickling would create a marker file
is refused and the marker never appears)."""

from __future__ import annotations

import io
import json
import pickle
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.hostile.strategies import Payload, json_text, json_values
from workbench.errors import ConfigError, WorkbenchError
from workbench.matrix_files import read_matrices
from workbench.prompts import parse_pairs, parse_prompts, read_pairs, read_prompts
from workbench.tasks.language import read_en_es_pairs

BOM = b"\xef\xbb\xbf"
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc"]
CONTROL = "".join(map(chr, range(1, 32))) + "\x7f\x85\u2028\u2029\ufeff\u202e"

lines = st.one_of(st.text(max_size=30), st.text(st.sampled_from(CONTROL), max_size=5),
                  st.integers(1, 200_000).map(lambda n: "x" * n),  # a huge line
                  json_values.map(json_text))
text_files = st.lists(lines, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8"))
hostile_bytes = st.one_of(
    st.binary(max_size=200), text_files, st.just(b""), text_files.map(lambda b: BOM + b),
    st.tuples(text_files, st.sampled_from(INVALID_UTF8)).map(lambda t: t[0] + t[1]),
    st.tuples(text_files, st.sampled_from([b"\r\n", b"\r", b"\x00", b"\x0c"])).map(lambda t: t[1].join([t[0], t[0]])),
)
records = st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "text": json_values, "prompt": json_values, "response": json_values, "en": json_values, "es": json_values}))
jsonl_files = st.lists(records.map(json_text), max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8"))


def _clean_prompts(prompts: object) -> None:
    assert isinstance(prompts, list) and prompts
    assert all(isinstance(p, str) and _visible(p) and "\n" not in p and "\r" not in p for p in prompts)


def _visible(text: str) -> bool:
    """Something besides whitespace and invisible format characters (a file of two BOMs was one prompt '\ufeff')."""
    return any(not (c.isspace() or unicodedata.category(c) == "Cf") for c in text)


def _file(data: bytes, suffix: str) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    with handle:
        handle.write(data)
    return Path(handle.name)


@pytest.mark.timeout(120)
@given(data=st.one_of(hostile_bytes, jsonl_files), suffix=st.sampled_from([".txt", ".jsonl", ".csv", ""]))
@example(data=BOM + BOM, suffix=".txt")  # found by the long profile: one prompt, '\ufeff'
def test_prompt_files(data, suffix):
    for read in (lambda: parse_prompts(f"upload{suffix}", data), lambda: read_prompts(_file(data, suffix))):
        try:
            _clean_prompts(read())
        except WorkbenchError:
            pass


@pytest.mark.timeout(120)
@given(data=st.one_of(jsonl_files, hostile_bytes))
def test_pair_files(data):
    path = _file(data, ".jsonl")
    try:
        for read in (lambda: parse_pairs("upload.jsonl", data), lambda: read_pairs(path)):
            try:
                pairs = read()
            except WorkbenchError:
                continue
            assert pairs and all(isinstance(p, str) and isinstance(r, str) and _visible(r) for p, r in pairs)
        try:
            en_es = read_en_es_pairs(path)
        except WorkbenchError:
            return
        assert len(en_es) >= 2 and all(isinstance(s, str) and s.strip() for pair in en_es for s in pair)
    finally:
        path.unlink()


def test_a_bom_and_unicode_line_separators_are_text_not_line_breaks():
    """Windows editors start files with a BOM; JSON allows U+2028 unescaped inside a string."""
    assert parse_prompts("p.txt", BOM + b"hello\r\nworld\n") == ["hello", "world"]
    line = json.dumps({"text": "a\u2028b\x0cc"}, ensure_ascii=False).encode()
    assert parse_prompts("p.jsonl", BOM + line + b"\n") == ["a\u2028b\x0cc"]
    pair = json.dumps({"prompt": "p\u2029", "response": "r\x85"}, ensure_ascii=False).encode()
    assert parse_pairs("p.jsonl", BOM + pair) == [("p\u2029", "r\x85")]
    for blank in (BOM, BOM + BOM, "\u200b \ufeff\n".encode()):
        with pytest.raises(ConfigError, match="holds no prompts"):
            parse_prompts("p.txt", blank)
    with pytest.raises(ConfigError, match="non-empty"):
        parse_prompts("p.jsonl", json.dumps({"text": "\ufeff\u200b"}).encode())


# ---------------------------------------------------------------------------------------------------------------------
# matrix files (RankMe of a file)


def _valid(suffix: str) -> bytes:
    x = torch.randn(4, 3)
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, x.numpy())
        return buffer.getvalue()
    if suffix == ".pt":
        buffer = io.BytesIO()
        torch.save({"a": x}, buffer)
        return buffer.getvalue()
    from safetensors.torch import save

    return save({"a": x, "b": torch.randn(2, 5, 3)})


def _read_matrices(data: bytes, suffix: str) -> None:
    path = _file(data, suffix)
    try:
        out = read_matrices(path)
    except WorkbenchError:
        return
    finally:
        path.unlink()
    assert out and all(t.ndim == 2 and t.shape[0] >= 2 for t in out.values())


@pytest.mark.timeout(120)
@given(suffix=st.sampled_from([".npy", ".pt", ".safetensors"]), data=st.data())
def test_matrix_files_truncated_or_corrupted(suffix, data):
    valid = _valid(suffix)
    cut = data.draw(st.integers(0, len(valid)), label="cut")
    flip = data.draw(st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)), max_size=3), label="flip")
    corrupted = bytearray(valid[:cut])
    for where, byte in flip:
        if where < len(corrupted):
            corrupted[where] = byte
    _read_matrices(bytes(corrupted), suffix)


@pytest.mark.timeout(120)
@given(suffix=st.sampled_from([".npy", ".pt", ".safetensors"]), data=st.binary(max_size=300))
def test_matrix_files_random_bytes(suffix, data):
    _read_matrices(data, suffix)


def test_the_payload_runs_code_when_unpickled(tmp_path):
    """The control: the payload used below does create its marker when unpickled plainly."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


def _payloads(marker: Path) -> dict[str, bytes]:
    obj = np.empty(2, dtype=object)
    obj[:] = [Payload(str(marker)), Payload(str(marker))]
    npy, pt = io.BytesIO(), io.BytesIO()
    np.save(npy, obj, allow_pickle=True)
    torch.save({"a": Payload(str(marker))}, pt)
    plain = pickle.dumps({"a": Payload(str(marker))})
    return {"object.npy": npy.getvalue(), "pickle.npy": plain, "zip.pt": pt.getvalue(), "legacy.pt": plain,
            "pickle.safetensors": plain}


def test_matrix_files_never_unpickle_code(tmp_path):
    marker = tmp_path / "ran"
    for name, data in _payloads(marker).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match="read_matrices"):
            read_matrices(path)
        assert not marker.exists(), f"{name} ran its payload"


def test_empty_and_object_matrix_files_are_named(tmp_path):
    for suffix in (".npy", ".pt", ".safetensors"):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        with pytest.raises(ConfigError, match="read_matrices"):
            read_matrices(tmp_path / f"empty{suffix}")
