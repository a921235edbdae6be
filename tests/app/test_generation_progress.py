"""The dashboard's generating pages (Dynamics, Token maps) under Streamlit's AppTest on the tiny model: the progress
bar moves once per generated token, and stopping the script mid-generation (what Cancel does: the rerun it requests
raises Streamlit's control exception from the next bar update) leaves no hook on the page's model and no result."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.runtime.scriptrunner_utils.exceptions import StopException
from streamlit.testing.v1 import AppTest

import workbench_analyses.erank_dynamics as ed
import workbench_app.common as common
from workbench.capture.hooks import count_hooks
from workbench.intervene import generation

APP = Path(__file__).resolve().parents[2] / "app"


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(next((APP / "pages").glob(f"*_{name}.py"))), default_timeout=300)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.fixture
def watched(tiny_model, monkeypatch):
    """Every progress report the page's callback receives, and every model the generation loop ran on; ``stop_at``
    (desc prefix, token) stops the script there as Cancel's rerun would."""
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(tiny_model.folder))
    seen: list[tuple[str, int, int | None]] = []
    models: list = []
    stop_at: dict[str, int] = {}
    real_reporting, real_generate = common.reporting, generation.generate

    def reporting(callback):
        def both(desc, done, total):
            seen.append((desc, done, total))
            callback(desc, done, total)
            if any(desc.startswith(prefix) and done == at for prefix, at in stop_at.items()):
                raise StopException()
        return real_reporting(both)

    def generate(lm, *args, **kwargs):
        models.append(lm)
        return real_generate(lm, *args, **kwargs)

    monkeypatch.setattr(common, "reporting", reporting)
    monkeypatch.setattr(ed, "generate", generate)
    monkeypatch.setattr(generation, "generate", generate)  # text_token_maps imports it at call time
    return {"seen": seen, "models": models, "stop_at": stop_at}


def generation_reports(seen, prefix):
    return [(done, total) for desc, done, total in seen if desc.startswith(prefix)]


def test_dynamics_page_reports_every_generated_token(watched):
    at = page("Dynamics")
    at.text_area(key="prompt").set_value("hello there, how are you").run()
    at.slider(key="max_new_tokens").set_value(8).run()
    at.slider(key="stride").set_value(2).run()
    at.button(key="go").click().run()
    assert not at.exception, [e.message for e in at.exception]
    reports = generation_reports(watched["seen"], "erank_dynamics: generating")
    n = at.session_state["dyn_result"].n_response_tokens
    assert reports == [(i, 8) for i in range(n + 1)]  # 0, then once per token (fewer than 8 if EOS came first)
    assert count_hooks(watched["models"][-1].hook_points()) == 0


@pytest.mark.parametrize("name, key, prefix, result", [
    ("Dynamics", "max_new_tokens", "erank_dynamics: generating", "dyn_result"),
    ("Token_maps", "max_new", "token maps: generating", "tam_maps"),
])
def test_cancel_mid_generation_leaves_no_hooks_and_no_result(watched, name, key, prefix, result):
    at = page(name)
    at.slider(key=key).set_value(8).run()
    if name == "Dynamics":
        at.slider(key="stride").set_value(2).run()
    watched["stop_at"][prefix] = 3
    at.button(key="go").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert generation_reports(watched["seen"], prefix)[-1] == (3, 8)  # stopped at the third token
    assert result not in at.session_state
    lm = watched["models"][-1]
    assert count_hooks(lm.hook_points()) == 0
    watched["stop_at"].clear()
    at.button(key="go").click().run()  # the next run completes on the same model
    assert not at.exception and result in at.session_state
    assert generation_reports(watched["seen"], prefix)[-1][0] >= 1
