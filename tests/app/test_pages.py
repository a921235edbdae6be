"""Every dashboard page under Streamlit's AppTest, on tiny models: widgets driven, the numbers shown equal the API's
for the same inputs, edits applied and reverted bit for bit, bad input shown as a message (never an exception)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from workbench import registry
from workbench.report import Report
from workbench.runner import run_analyses, run_analysis
from workbench.tam import text_token_maps
from workbench_analyses.activation_spectra import ActivationSpectraConfig
from workbench_analyses.erank_dynamics import ErankDynamicsConfig
from workbench_analyses.gradient_spectra import GradientSpectraConfig
from workbench_analyses.low_rank import LowRankConfig
from workbench_analyses.rankme import RankMeConfig
from workbench_analyses.subspace_patching import SubspacePatchingConfig
from workbench_analyses.weight_spectra import WeightSpectraConfig

APP = Path(__file__).resolve().parents[2] / "app"


def page(name: str) -> AppTest:
    path = APP / "Home.py" if name == "Home" else next((APP / "pages").glob(f"*_{name}.py"))
    at = AppTest.from_file(str(path), default_timeout=300)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def frame(at: AppTest, column: str):
    """The first dataframe shown with ``column``."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no dataframe with column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


def numeric_equal(shown, expected) -> None:
    assert np.allclose(np.asarray(shown, dtype=float), np.asarray(expected, dtype=float), rtol=1e-5, atol=1e-6,
                       equal_nan=True)


@pytest.fixture
def app_model(tiny_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(tiny_model.folder))
    return tiny_model


def test_home_lists_every_registered_analysis(app_model):
    at = page("Home")
    assert sorted(frame(at, "analysis")["analysis"]) == sorted(registry.names())
    assert "2 layers" in at.sidebar.caption[0].value


def test_model_page_weight_spectra_equal_the_api(app_model):
    at = click(page("Model"), "go")
    assert [d.proto.label for d in at.get("download_button")] == ["Download JSON", "Download HTML"]
    expected = run_analysis(app_model, "weight_spectra", WeightSpectraConfig(include_embeddings=False))
    shown = frame(at, "effective rank") if "effective rank" in frame(at, "layer").columns else frame(at, "layer")
    header, rows = expected.table()
    assert list(shown.columns) == header and len(shown) == len(rows)
    for i, name in enumerate(header):
        if all(isinstance(r[i], float) for r in rows):
            numeric_equal(shown[name], [r[i] for r in rows])


PROMPTS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world, hello again", "one two three four"]


def test_activations_page_pasted_prompts_equal_the_api(app_model):
    at = page("Activations")
    at.radio(key="act-source").set_value("Paste").run()
    at.text_area(key="act-paste").set_value("\n".join(PROMPTS)).run()
    at.number_input(key="max_tokens").set_value(0).run()
    click(at, "go")
    expected = run_analyses(app_model, {"activation_spectra": ActivationSpectraConfig(kinds=["resid_post"]),
                                        "rankme": RankMeConfig(prompt_sets={"selected prompts": "report"},
                                                               site_kind="resid_post")}, texts=PROMPTS)
    shown = frame(at, "effective rank (centred)")
    numeric_equal(shown["effective rank (centred)"], expected["activation_spectra"].erank_centred)
    numeric_equal(shown["RankMe (centred)"], expected["activation_spectra"].rankme_centred)
    assert len(at.get("plotly_chart")) >= 2  # activation spectra and RankMe figures


@pytest.mark.parametrize("name, data, message", [
    ("empty.txt", b"\n\n", "holds no prompts"),
    ("bin.txt", b"\x00\x01\x02", "binary"),
    ("cols.jsonl", b'{"prompt": "x"}\n', '"text"'),
    ("huge.txt", b"x\n" * (4 * 2**20 + 1), "over the 8.0 MiB limit"),
])
def test_activations_page_rejects_bad_uploads_with_a_message(app_model, name, data, message):
    at = page("Activations")
    at.radio(key="act-source").set_value("Upload").run()
    at.file_uploader(key="act-upload").set_value((name, data, "text/plain")).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="go").disabled


def test_dynamics_page_equals_the_api(app_model):
    at = page("Dynamics")
    at.text_area(key="prompt").set_value("hello there, how are you").run()
    at.slider(key="max_new_tokens").set_value(8).run()
    at.slider(key="stride").set_value(2).run()
    click(at, "go")
    expected = run_analysis(app_model, "erank_dynamics", ErankDynamicsConfig(
        prompt="hello there, how are you", max_new_tokens=8, stride=2, chat_template=True))
    shown = frame(at, "ERV")
    numeric_equal(shown.iloc[:, 2], [r[2] for r in expected.table()[1]])  # ER at the last k: final norm, per layer
    assert any(t.value == expected.response for t in at.text)
    assert at.metric[0].value == f"{expected.final_erv:.4g}"  # the headline: ERV of the final-norm output


def test_gradients_page_two_datasets_equal_the_api(app_model):
    at = page("Gradients")
    at.slider(key="samples").set_value(2).run()
    click(at, "go")
    expected = run_analysis(app_model, "gradient_spectra", GradientSpectraConfig(
        datasets={"instruction": "bundled:instruction", "reasoning": "bundled:reasoning"}, max_samples=2,
        shuffled_control=False))
    shown = frame(at, expected.table()[0][-1])
    header, rows = expected.table()
    for i, name in enumerate(header):
        if all(isinstance(r[i], float) for r in rows):
            numeric_equal(shown[name], [r[i] for r in rows])
    at.selectbox(key="ds-B").set_value("bundled:instruction").run()  # the same dataset twice is refused
    assert at.button(key="go").disabled and at.warning


def test_patching_page_equals_the_api(tiny_ioi_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(tiny_ioi_model.folder))
    at = page("Patching")
    at.selectbox(key="layer").set_value(0).run()
    at.slider(key="pairs").set_value(24).run()
    at.slider(key="epochs").set_value(3).run()
    at.slider(key="heatmap_pairs").set_value(4).run()
    click(at, "go")
    expected = run_analysis(tiny_ioi_model, "subspace_patching", SubspacePatchingConfig(
        n_pairs=24, epochs=3, heatmap_pairs=4, layer=0))
    header, rows = expected.table()
    shown = frame(at, header[-1])
    assert len(shown) == len(rows)
    for i, name in enumerate(header):
        if all(isinstance(r[i], float) for r in rows):
            numeric_equal(shown[name], [r[i] for r in rows])


PAGE_PROMPT = "The movie I watched last night was"


def _app_model(folder) -> object:
    from workbench_app.common import _load

    return _load(str(folder), "cpu")


def test_steering_page_steers_applies_and_reverts_exactly(app_model):
    at = page("Steering_and_edits")
    click(at, "build")
    at.slider(key="max_new").set_value(4).run()
    click(at, "generate")
    texts = " ".join(m.value for m in at.markdown)
    assert "Unsteered" in texts and "Steered, α = 1.0" in texts
    assert len([t for t in at.text if t.value.startswith(PAGE_PROMPT)]) == 2  # both continuations shown
    shared = _app_model(app_model.folder)
    before = {k: v.clone() for k, v in shared.model.state_dict().items()}
    at.slider(key="rho").set_value(0.05).run()
    click(at, "apply")
    assert any("The loaded model is edited" in w.value for w in at.warning)
    lm = at.session_state["edit_handle"].lm  # the tab's own copy (tests/app/test_dashboard_sharing.py: other tabs)
    assert any(not torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # the weights changed
    other = page("Token_maps")  # a new session: its own state, so no banner there
    at.switch_page(str(APP / "pages" / "7_Token_maps.py")).run()  # the same session on another page: the banner
    assert any("carry a Steer2Edit edit" in w.value for w in at.sidebar.warning)
    assert not other.sidebar.warning
    at.switch_page(str(APP / "pages" / "6_Steering_and_edits.py")).run()
    click(at, "revert")
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # bit for bit
    assert not any("The loaded model is edited" in w.value for w in at.warning)


def test_token_maps_page_equals_the_api(app_model):
    at = page("Token_maps")
    at.text_area(key="prompt").set_value("abcab c").run()
    at.slider(key="max_new").set_value(3).run()
    click(at, "go")
    expected = text_token_maps(app_model, "abcab c", max_new_tokens=3)
    at.selectbox(key="step").set_value(1).run()
    shown = frame(at, "after ECI")
    numeric_equal(shown["raw"], expected.raw[1])
    numeric_equal(shown["after ECI"], expected.eci[1])
    numeric_equal(shown["filtered"], expected.filtered[1])
    assert len(frame(at, "generated token")) == 3
    assert [d.proto.label for d in at.get("download_button")] == ["Download JSON", "Download HTML"]
    at.selectbox(key="eci_weights").set_value("own_position").run()  # the earlier reading, as an option
    click(at, "go")
    own = text_token_maps(app_model, "abcab c", max_new_tokens=3, eci_weights="own_position")
    numeric_equal(frame(at, "after ECI")["after ECI"], own.eci[1])


def test_analyses_page_runs_any_analysis_and_reports_bad_json(app_model):
    at = page("Analyses")
    at.selectbox(key="name").set_value("weight_spectra").run()
    at.text_area(key="config-weight_spectra").set_value(json.dumps({"include_embeddings": False})).run()
    click(at, "go")
    expected = run_analysis(app_model, "weight_spectra", WeightSpectraConfig(include_embeddings=False))
    header, rows = expected.table()
    assert len(frame(at, header[0])) == len(rows)
    at.text_area(key="config-weight_spectra").set_value("{not json").run()
    click(at, "go")
    assert any("not valid JSON" in e.value for e in at.error)
    at.text_area(key="config-weight_spectra").set_value(json.dumps({"esd_layer": "x"})).run()
    click(at, "go")
    assert any("'esd_layer'" in e.value for e in at.error)


def test_analyses_page_runs_low_rank_with_the_apis_numbers(app_model):
    """Issue 20: the low_rank analysis appears on the Analyses page by registering, and its rank table there equals
    the API's for the same config (the verification truncates the tiny model and restores it)."""
    config = {"prompts": "bundled:prose", "max_length": 32, "heldout_texts": 4, "verify_budgets": [0.3]}
    at = page("Analyses")
    at.selectbox(key="name").set_value("low_rank").run()
    at.text_area(key="config-low_rank").set_value(json.dumps(config)).run()
    click(at, "go")
    assert not at.exception
    expected = run_analysis(app_model, "low_rank", LowRankConfig(**config))
    header, rows = expected.table()
    shown = frame(at, "rank whitened @5 %")["rank whitened @5 %"]
    assert list(shown) == [row[header.index("rank whitened @5 %")] for row in rows]
    at.text_area(key="config-low_rank").set_value(json.dumps({"budgets": [2]})).run()
    click(at, "go")
    assert any("'budgets'" in e.value for e in at.error)


def test_reports_page_opens_and_compares(app_model, tmp_path):
    result = run_analysis(app_model, "weight_spectra", WeightSpectraConfig(include_embeddings=False))
    Report({"weight_spectra": result}, {"model": "a", "seed": 0}).write(tmp_path / "one")
    Report({"weight_spectra": result}, {"model": "b", "seed": 0}).write(tmp_path / "two")
    at = page("Reports")
    at.text_input(key="folder").set_value(str(tmp_path)).run()
    assert not at.exception and at.get("plotly_chart")
    at.multiselect(key="chosen").set_value([str(tmp_path / "one" / "report.json"),
                                            str(tmp_path / "two" / "report.json")]).run()
    prov = frame(at, "differs")
    assert dict(zip(prov["field"], prov["differs"])) == {"model": True, "seed": False}
    at.file_uploader(key="uploads").set_value(("bad.json", b"{}", "application/json")).run()
    assert any("bad.json: not a workbench report" in e.value for e in at.error)


def test_gradients_page_takes_an_uploaded_dataset_and_refuses_a_bad_one(app_model):
    at = page("Gradients")
    at.selectbox(key="ds-A").set_value("upload").run()
    assert at.button(key="go").disabled  # nothing uploaded yet
    good = b'{"prompt": "2+2?", "response": "4"}\n{"prompt": "Capital of France?", "response": "Paris"}\n'
    at.file_uploader(key="up-A").set_value(("mine.jsonl", good, "application/json")).run()
    assert any(c.value == "2 pairs" for c in at.caption) and not at.button(key="go").disabled
    at.file_uploader(key="up-A").set_value(("bad.jsonl", b'{"prompt": "x"}\n', "application/json")).run()
    assert any('bad.jsonl:1 must be an object with "prompt" and "response"' in e.value for e in at.error)
    assert at.button(key="go").disabled


@pytest.mark.slow
def test_token_maps_page_on_the_bundled_model(real_model, all_threads, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(real_model.folder))
    at = page("Token_maps")
    at.slider(key="max_new").set_value(2).run()
    click(at, "go")  # the default prompt: "The password is dragon. ... The password is"
    explain = frame(at, "generated token")
    assert explain["generated token"][0] == "0:  dragon" and explain["raw"][0].startswith(" dragon")
    expected = text_token_maps(real_model, at.text_area(key="prompt").value, max_new_tokens=2)
    numeric_equal(frame(at, "after ECI")["raw"], expected.raw[0])


def test_a_fake_entry_point_analysis_appears_on_the_dashboard(app_model, tmp_path, monkeypatch):
    """A third-party analysis (tests/plugin, registered through the workbench.analyses entry point) is listed on Home
    and runs on the Analyses page like a built-in one."""
    from tests.helpers import install_fake_plugin

    monkeypatch.syspath_prepend(str(install_fake_plugin(tmp_path / "site")))
    registry._reset()
    try:
        home = page("Home")
        assert "weight_norms" in list(frame(home, "analysis")["analysis"])
        at = page("Analyses")
        at.selectbox(key="name").set_value("weight_norms").run()
        click(at, "go")
        expected = run_analysis(app_model, "weight_norms")
        assert list(frame(at, "matrix")["matrix"]) == expected.matrix
        numeric_equal(frame(at, "erank")["erank"], expected.erank)
    finally:
        import sys

        sys.modules.pop("wb_weight_norms", None)
        registry._reset()
