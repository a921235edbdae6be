"""Sweep specs: expansion into cells, stable ids, and every refusal named before any work (no model is loaded)."""

from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.sweeps import Cell, SpecError, load_spec, parse_spec
from workbench.sweeps.spec import prompt_texts


@pytest.fixture
def base(tmp_path):
    """A spec folder with three (empty) checkpoint folders, a bare model folder and two prompt files."""
    for name in ("checkpoint-500", "checkpoint-20", "checkpoint-100", "other"):
        (tmp_path / "ckpts" / name).mkdir(parents=True)
    (tmp_path / "model").mkdir()
    (tmp_path / "a.txt").write_text("one prompt\nanother prompt\n")
    (tmp_path / "b.jsonl").write_text('{"text": "a json prompt"}\n')
    return tmp_path


def spec(**overrides) -> dict:
    data = {"analyses": ["activation_spectra", "weight_spectra"], "prompts": ["a.txt", "bundled:prose"],
            "models": [{"source": "model", "label": "M", "step": 7}]}
    return {k: v for k, v in (data | overrides).items() if v is not None}


def test_product_of_models_analyses_prompts_and_grid(base):
    data = spec(models=[{"glob": "ckpts/checkpoint-*"}, {"source": "smollm2-135m"}],
                grid={"activation_spectra": {"n_values": [8, 16], "kinds": [["resid_post"]]},
                      "weight_spectra": {"per_head": [True, False]}})
    cells = parse_spec(data, base).cells
    # 4 models x (activation: 2 prompt sets x 2 grid points + weights: 1 "-" x 2 grid points)
    assert len(cells) == 4 * (2 * 2 + 2) == len({c.id for c in cells})
    assert [(c.label, c.step) for c in cells[::6]] == [("checkpoint-20", 20), ("checkpoint-100", 100),
                                                       ("checkpoint-500", 500), ("smollm2-135m", None)]
    first = cells[:6]
    assert [(c.analysis, c.prompts, c.config) for c in first] == [
        ("activation_spectra", str(base / "a.txt"), {"n_values": 8, "kinds": ["resid_post"]}),
        ("activation_spectra", str(base / "a.txt"), {"n_values": 16, "kinds": ["resid_post"]}),
        ("activation_spectra", "bundled:prose", {"n_values": 8, "kinds": ["resid_post"]}),
        ("activation_spectra", "bundled:prose", {"n_values": 16, "kinds": ["resid_post"]}),
        ("weight_spectra", "-", {"per_head": True}), ("weight_spectra", "-", {"per_head": False})]
    assert first[0].model == str(base / "ckpts" / "checkpoint-20") and cells[-1].model == "smollm2-135m"
    assert first[0].prompts_sha and first[2].prompts_sha == "" and first[4].prompts_sha == ""


def test_analyses_without_prompts_collapse_to_one_cell_and_need_no_prompts(base):
    cells = parse_spec(spec(analyses=["weight_spectra"], prompts=None), base).cells
    assert [(c.analysis, c.prompts) for c in cells] == [("weight_spectra", "-")]
    assert prompt_texts("-") is None


def test_settings_and_defaults(base):
    cell = parse_spec(spec(batch_size=2, max_tokens=64, seed=3), base).cells[0]
    assert (cell.batch_size, cell.max_tokens, cell.seed, cell.label, cell.step) == (2, 64, 3, "M", 7)
    cell = parse_spec(spec(models=[{"source": "model"}]), base).cells[0]
    assert (cell.batch_size, cell.max_tokens, cell.seed, cell.label, cell.step, cell.config) == (8, None, 0, "model",
                                                                                                None, {})


def test_id_is_stable_and_ignores_label_and_step(base):
    a = parse_spec(spec(), base).cells[0]
    b = parse_spec(spec(models=[{"source": "model", "label": "renamed", "step": 99}]), base).cells[0]
    assert a.id == b.id and len(a.id) == 16 and a != b
    assert Cell.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    changed = [parse_spec(spec(seed=1), base).cells[0], parse_spec(spec(batch_size=4), base).cells[0],
               parse_spec(spec(grid={"activation_spectra": {"n_values": 8}}), base).cells[0]]
    assert len({a.id, *(c.id for c in changed)}) == 4
    (base / "a.txt").write_text("edited prompts\n")  # same path, other contents: another cell
    assert parse_spec(spec(), base).cells[0].id != a.id
    # the id is the documented hash, so other tools can recompute it
    import hashlib
    key = {"model": a.model, "analysis": a.analysis, "prompts": a.prompts, "prompts_sha": a.prompts_sha,
           "config": {}, "batch_size": 8, "max_tokens": None, "seed": 0}
    assert a.id == hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def test_load_spec_reads_toml_and_json_relative_to_the_file(base):
    (base / "s.toml").write_text('analyses = ["weight_spectra"]\n[[models]]\nglob = "ckpts/checkpoint-*"\n'
                                 '[grid.weight_spectra]\nper_head = [true, false]\n')
    loaded = load_spec(base / "s.toml")
    assert loaded.path == base / "s.toml" and len(loaded.cells) == 6
    (base / "s.json").write_text(json.dumps(spec()))
    assert [c.id for c in load_spec(base / "s.json").cells] == [c.id for c in parse_spec(spec(), base).cells]


def test_bundled_prompt_sets():
    assert len(prompt_texts("bundled:all")) > len(prompt_texts("bundled:code")) > 0


@pytest.mark.parametrize("overrides,message", [
    ({"analyses": ["activation_spectra", "nope"]}, "'analyses[1]' must be one of"),
    ({"analyses": []}, "'analyses' must be a non-empty list"),
    ({"analyses": None}, "'analyses' is missing"),
    ({"models": [{"source": "missing-folder"}]}, "'models[0].source' must be a bundled name"),
    ({"models": [{"glob": "ckpts/step-*"}]}, "'models[0].glob' = 'ckpts/step-*' matches no folder"),
    ({"models": [{"glob": "ckpts/*", "label": "x"}]}, "'models[0]' has unknown key(s) ['label']"),
    ({"models": [{"source": "model", "glob": "ckpts/*"}]}, "exactly one of 'source' or 'glob'"),
    ({"models": [{"source": "model", "step": "5"}]}, "'models[0].step' must be an int"),
    ({"models": []}, "'models' must be a non-empty list"),
    ({"models": [{"source": "model"}, {"source": "model"}]}, "names a model twice"),
    ({"prompts": ["bundled:nonsense"]}, "'prompts[0]' must be one of ['bundled:all', 'bundled:prose'"),
    ({"prompts": ["missing.txt"]}, "'prompts[0]' = 'missing.txt'"),
    ({"prompts": []}, "'prompts' must be a non-empty list"),
    ({"grid": {"rankme": {}}}, "'grid' configures ['rankme'], which are not in 'analyses'"),
    ({"grid": {"weight_spectra": {"min_dim": [8]}}}, "'grid.weight_spectra' = {'min_dim': 8}"),
    ({"grid": {"weight_spectra": {"per_head": []}}}, "'grid.weight_spectra.per_head' is an empty list"),
    ({"grid": {"activation_spectra": {"n_values": [8, 0]}}}, "'grid.activation_spectra' = {'n_values': 0}"),
    ({"grid": {"weight_spectra": {"per_head": [True, True]}}}, "two cells have the same definition"),
    ({"batch_size": 0}, "'batch_size' must be an int >= 1; received 0"),
    ({"max_tokens": "many"}, "'max_tokens' must be an int >= 1"),
    ({"sites": ["x"]}, "unknown key(s) ['sites']"),
])
def test_refusals_name_the_key(base, overrides, message):
    with pytest.raises(SpecError) as info:
        parse_spec(spec(**overrides), base)
    assert message in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_a_list_valued_field_written_flat_gets_a_hint(base):
    with pytest.raises(SpecError, match=r"write a list-valued field as a list of lists, e.g. sites = \[\['blocks"):
        parse_spec(spec(grid={"activation_spectra": {"sites": ["blocks.*.hook_resid_post"]}}), base)


def test_unknown_config_field_lists_the_allowed_ones(base):
    with pytest.raises(SpecError, match=r"grid.weight_spectra.*min_dim.*only the keys.*per_head"):
        parse_spec(spec(grid={"weight_spectra": {"min_dim": 8}}), base)


@pytest.mark.parametrize("name,text,kind", [("s.toml", "analyses = [", "TOML"), ("s.json", "{", "JSON")])
def test_syntax_errors_name_the_file(base, name, text, kind):
    (base / name).write_text(text)
    with pytest.raises(SpecError, match=rf"{name}: not valid {kind}"):
        load_spec(base / name)


def test_refusal_from_a_file_names_the_file(base):
    (base / "s.toml").write_text('analyses = ["nope"]\n[[models]]\nsource = "model"\n')
    with pytest.raises(SpecError, match=r"s.toml: 'analyses\[0\]' must be one of \[.*weight_spectra"):
        load_spec(base / "s.toml")
    with pytest.raises(SpecError, match="is not a file"):
        load_spec(base / "absent.toml")
