"""The Features page under Streamlit's AppTest on the tiny model: an SAE with planted features (test_sae_features.py)
loaded from a sae-lens folder shows its summary, every feature in the table, the planted feature's contexts on its
token, and is found by that token; a bad folder is a named message; the training path trains, caches and shows FVU."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import workbench_app.common as common
from tests.workbench.test_sae_features import N_SAE, PLANTED, SITE, TEXTS, planted_sae

PAGE = Path(__file__).resolve().parents[2] / "app" / "pages" / "11_Features.py"


def page() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def act(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def frames(at: AppTest, column: str) -> list:
    """The dataframes shown with ``column``, in page order (AppTest's dataframes carry no key)."""
    return [d.value for d in at.dataframe if column in d.value.columns]


@pytest.fixture
def app_model(tiny_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(tiny_model.folder))
    return tiny_model


@pytest.fixture
def sae_folder(app_model, tmp_path):
    folder = tmp_path / "planted-sae"
    planted_sae(app_model).save_model(folder)  # records SITE as its hook name
    return folder


def paste(at: AppTest, texts: list[str]) -> AppTest:
    at.radio(key="feat-source").set_value("Paste").run()
    at.text_area(key="feat-paste").set_value("\n".join(texts))
    return act(at)


def loaded(sae_folder: Path) -> AppTest:
    """The page with the planted SAE loaded, the test prompts pasted and the features computed."""
    at = page()
    at.radio(key="sae_source").set_value("Load a sae-lens folder").run()
    at.text_input(key="sae_path").set_value(str(sae_folder))
    act(paste(at, TEXTS))
    assert at.text_input(key="site_text").value == SITE  # the SAE's recorded hook became the site
    assert at.selectbox(key="layer").disabled and at.selectbox(key="kind").disabled
    at.button(key="go").click()
    return act(at)


def test_page_renders_with_defaults(app_model):
    at = page()
    assert at.radio(key="sae_source").value == "Train on this model"
    assert at.selectbox(key="layer").value == 1 and at.selectbox(key="kind").value == "resid_post"
    assert not at.selectbox(key="layer").disabled
    assert any("blocks.1.hook_resid_post" in c.value for c in at.caption)
    assert at.number_input(key="d_sae").value == 4 * app_model.facts.d_model
    assert at.number_input(key="sae_k").value == 32 and at.number_input(key="epochs").value == 20
    assert not at.button(key="go").disabled  # the bundled prose prompts are selected
    assert "feat_stats" not in at.session_state


def test_loaded_sae_shows_its_features_and_the_planted_contexts(sae_folder):
    at = loaded(sae_folder)
    stats = at.session_state["feat_stats"]
    assert any(i.value == stats.summary() and f"{N_SAE} features" in i.value for i in at.info)
    assert len(frames(at, "density")[0]) == N_SAE
    assert at.number_input(key="feature").value == 3  # the densest: feature 3 fires on every token
    for feature, token in PLANTED.items():
        at.number_input(key="feature").set_value(feature)
        act(at)
        [contexts] = frames(at, "rank")
        assert len(contexts) >= 2 and set(contexts["token"]) == {token}
        assert f"font-weight: bold;\" title=\"0.5\">{token}</span>" in at.html[0].value
    assert [d.proto.label for d in at.get("download_button")] == ["Download JSON"]
    assert len(at.get("plotly_chart")) == 2  # the density histogram and the feature's figure


def test_search_finds_the_planted_feature_by_its_token(sae_folder):
    at = loaded(sae_folder)
    for feature, token in PLANTED.items():
        at.text_input(key="search").set_value(token)
        act(at)
        assert frames(at, "density")[1]["feature"].iloc[0] == feature
    at.text_input(key="search").set_value("Paris")
    act(at)
    assert any("no feature fires on or promotes that token" in i.value for i in at.info)
    assert len(frames(at, "density")) == 1  # the features table only


def test_a_bad_folder_is_a_named_error(app_model, tmp_path):
    at = page()
    at.radio(key="sae_source").set_value("Load a sae-lens folder").run()
    at.text_input(key="sae_path").set_value(str(tmp_path / "missing"))
    act(at)
    assert any("'path'" in e.value and "load_sae" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.expander  # a named message, no traceback folded away
    assert "feat_stats" not in at.session_state
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cfg.json").write_text("{not json")
    (broken / "sae_weights.safetensors").write_bytes(b"x")
    at.text_input(key="sae_path").set_value(str(broken))
    act(at)
    assert any("sae-lens could not load the SAE" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.expander and "feat_stats" not in at.session_state


def test_a_site_the_sae_was_not_trained_on_is_a_named_error(sae_folder):
    at = loaded(sae_folder)
    at.text_input(key="site_text").set_value("blocks.1.hook_resid_post")
    at.button(key="go").click()
    act(at)
    assert any("'site'" in e.value and SITE in e.value for e in at.error), [e.value for e in at.error]
    assert not at.expander


def test_training_path_trains_caches_and_shows_fvu(app_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    seen: list[tuple[str, int, int | None]] = []
    real_reporting = common.reporting

    def reporting(callback):  # every report the page's progress bar receives
        def both(desc, done, total):
            seen.append((desc, done, total))
            callback(desc, done, total)
        return real_reporting(both)

    monkeypatch.setattr(common, "reporting", reporting)
    at = paste(page(), TEXTS)
    at.number_input(key="d_sae").set_value(16)
    at.number_input(key="sae_k").set_value(4)
    at.number_input(key="epochs").set_value(1)
    at.button(key="go").click()
    act(at)
    stats = at.session_state["feat_stats"]
    assert stats.site == "blocks.1.hook_resid_post" and stats.n_features == 16
    assert stats.sae["path"].startswith(str(tmp_path / "cache"))
    assert [m.value for m in at.metric if m.label.startswith("FVU")] == [f"{stats.sae['fvu']:.4g}"]
    assert len(frames(at, "density")[0]) == 16
    assert ("Training SAE", 1, 1) in seen
    assert any(desc == "Feature statistics" and done == total > stats.n_tokens for desc, done, total in seen)  # + BOS
    seen.clear()
    at.button(key="go").click()
    act(at)  # the same prompts and settings: the SAE comes from the cache, untrained
    assert at.session_state["feat_stats"].sae == stats.sae
    assert not any(desc == "Training SAE" for desc, _, _ in seen)
