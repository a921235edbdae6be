"""Report: JSON round-trip, self-contained HTML, refusal to overwrite, atomic writes; prompt files."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.prompts import default_prompts, read_prompts
from workbench.report import Report
from workbench.runner import run_analyses

TEXTS = ["A first little text.", "And a second one, slightly longer than the first."]


@pytest.fixture(scope="module")
def report(tiny_model):
    results = run_analyses(tiny_model, ["activation_spectra", "weight_spectra"], texts=TEXTS)
    return Report(results=results, provenance={"model": tiny_model.name, "seed": 0})


def test_writes_json_that_round_trips_and_offline_html(report, tmp_path):
    out = report.write(tmp_path / "r")
    data = json.loads((out / "report.json").read_text())
    assert Report.load(out).to_dict() == data == report.to_dict()
    page = (out / "report.html").read_text()
    assert page.count("<script type='text/javascript'>") == 1  # plotly.js inlined once
    assert page.count('class="plotly-graph-div"') == sum(len(r.figures()) for r in report.results.values())
    assert "cdn.plot.ly/plotly" not in page.split("</script>", 1)[1]  # figures never load plotly from a CDN
    assert "Provenance" in page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_refuses_existing_folder_without_overwrite(report, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="'out'"):
        report.write(out)
    assert (out / "keep.txt").read_text() == "mine"
    report.write(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_failure_mid_write_leaves_nothing(report, tmp_path, monkeypatch):
    def boom(self):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Report, "to_html", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        report.write(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


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
    from workbench.prompts import parse_pairs, parse_prompts

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
