"""A dashboard safe to share (issue 21 point 4), under Streamlit's AppTest: two AppTest instances are two browser tabs
of one server (they share ``st.cache_resource``, so the same cached model). A Steer2Edit edit in one tab goes to that
tab's own copy — the other tab computes with the unedited weights — and its revert restores the copy bit for bit;
typed folders outside the allowed roots are refused with one line naming the parameter and the roots; uploads are
size-bounded; a non-loopback bind is announced in the sidebar and on the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from tests.app.test_pages import click
from tests.app.test_pages import page as tab
from workbench.cli import app as cli
from workbench.intervene.steer import contrast_vectors

APP = Path(__file__).resolve().parents[2] / "app"


def weights(lm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def app_model(tiny_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_MODEL", str(tiny_model.folder))
    monkeypatch.delenv("WORKBENCH_APP_HOST", raising=False)
    return tiny_model


def test_an_edit_stays_in_its_tab_and_reverts_bit_for_bit(app_model):
    from workbench_app.common import _load

    shared = _load(str(app_model.folder), "cpu")  # the cached model every tab starts from
    original = weights(shared)
    editor, other = tab("Steering_and_edits"), tab("Steering_and_edits")
    click(editor, "build")
    editor.slider(key="rho").set_value(0.05).run()
    click(editor, "apply")
    handle = editor.session_state["edit_handle"]
    assert handle.active and handle.lm is not shared  # the edit went to the tab's own copy
    assert not same(weights(handle.lm), original)
    assert same(weights(shared), original)  # the cached model, which other tabs use, is untouched
    assert any("in this tab's own copy" in w.value for w in editor.warning)

    click(other, "build")  # the other tab computes on the unedited weights
    pos, neg = (other.text_area(key=k).value.splitlines() for k in ("pos", "neg"))
    layers = list(other.session_state["vectors"])
    edited = contrast_vectors(handle.lm, pos, neg, layers=layers, span=other.radio(key="span").value)
    changed = False
    for layer, vecs in other.session_state["vectors"].items():
        for name in ("v_attn", "v_mlp", "v_resid", "z_mean", "post_mean"):
            v = getattr(vecs, name)
            assert torch.equal(v, getattr(editor.session_state["vectors"][layer], name))  # = built before the edit
            changed |= not torch.allclose(v, getattr(edited[layer], name))
    assert changed  # the check has teeth: the edited copy gives other vectors
    assert not other.warning and not other.sidebar.warning
    other.switch_page(str(APP / "pages" / "1_Model.py")).run()
    assert not other.sidebar.warning
    editor.switch_page(str(APP / "pages" / "1_Model.py")).run()
    assert any("carry a Steer2Edit edit" in w.value for w in editor.sidebar.warning)

    editor.switch_page(str(APP / "pages" / "6_Steering_and_edits.py")).run()
    click(editor, "revert")
    assert not handle.active and same(weights(handle.lm), original)  # the copy restored bit for bit
    assert same(weights(shared), original)
    assert "own_model" not in editor.session_state and "edit_handle" not in editor.session_state  # copy freed
    assert not any("edited" in w.value for w in editor.warning)


def refused(at: AppTest, where, name: str) -> str:
    assert not at.exception, [e.message for e in at.exception]
    lines = [e.value for e in where.error if f"parameter '{name}' must be a path inside the allowed roots" in e.value]
    assert len(lines) == 1 and "\n" not in lines[0], [e.value for e in where.error]
    return lines[0]


def test_typed_folders_outside_the_roots_are_refused(app_model, tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    (outside / "r").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("WORKBENCH_APP_ROOTS", os.pathsep.join([str(root), str(app_model.folder)]))

    reports = tab("Reports")
    for typed in (str(root / "link" / "r"), f"{root}/../outside", "/etc"):
        reports.text_input(key="folder").set_value(typed).run()
        assert str(root) in refused(reports, reports, "reports folder")
    reports.text_input(key="folder").set_value(str(root)).run()  # inside: no refusal, just no reports yet
    assert not reports.error and any("No reports yet" in i.value for i in reports.info)

    features = tab("Features")
    features.radio(key="sae_source").set_value("Load a sae-lens folder").run()
    features.text_input(key="sae_path").set_value(str(root / "link")).run()
    refused(features, features, "SAE folder")

    sweeps = tab("Sweeps")
    sweeps.text_input(key="folder").set_value("/etc").run()
    refused(sweeps, sweeps, "sweep folder")

    monkeypatch.setenv("WORKBENCH_APP_ROOTS", str(root))  # the model folder is now outside
    home = AppTest.from_file(str(APP / "Home.py"), default_timeout=300).run()
    refused(home, home.sidebar, "model folder")
    monkeypatch.delenv("WORKBENCH_APP_ROOTS")  # the default roots: the working directory and the cache
    from workbench.models.cache import cache_root
    from workbench_app.common import app_roots

    assert app_roots() == [Path.cwd().resolve(), cache_root().resolve()]


def test_report_uploads_over_the_limit_are_refused(app_model):
    from workbench_app.common import MAX_REPORT_BYTES

    at = tab("Reports")
    at.file_uploader(key="uploads").set_value(("big.json", b" " * (MAX_REPORT_BYTES + 1), "application/json")).run()
    assert not at.exception
    assert any(e.value == "big.json: 32.0 MiB is over the 32.0 MiB limit" for e in at.error), [e.value for e in at.error]


def test_a_shared_bind_is_announced_in_the_sidebar(app_model, monkeypatch):
    monkeypatch.setenv("WORKBENCH_APP_HOST", "0.0.0.0")
    at = tab("Home")
    assert any("listens on 0.0.0.0" in w.value for w in at.sidebar.warning)
    monkeypatch.setenv("WORKBENCH_APP_HOST", "127.0.0.1")
    assert not tab("Home").sidebar.warning


def test_streamlit_run_without_an_address_is_announced(app_model, caplog):
    """``streamlit run app/Home.py`` started outside the repository (no ``.streamlit/config.toml`` there, no
    ``--server.address``): Streamlit listens on every interface, and the sidebar and the terminal say so."""
    from streamlit import config

    import workbench_app.common as common

    old = config.get_option("server.address")
    config.set_option("server.address", None)
    try:
        common._TERMINAL_WARNED = False
        at = tab("Home")
        assert any("listens on every network interface" in w.value for w in at.sidebar.warning)
        assert any("listens on every network interface" in r.getMessage() and "workbench app" in r.getMessage()
                   for r in caplog.records)
    finally:
        config.set_option("server.address", old)
    assert not tab("Home").sidebar.warning  # the repository's .streamlit/config.toml: 127.0.0.1


def _listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6, hex as the kernel
    writes them)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


def test_a_plain_streamlit_run_in_the_repository_listens_on_loopback_only(tiny_model):
    import signal
    import socket
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"WORKBENCH_APP_MODEL": str(tiny_model.folder)}
    env.pop("WORKBENCH_APP_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.headless", "true",
                             "--server.port", str(port)], cwd=APP.parent, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the dashboard did not start in 60 s"
                time.sleep(0.25)
        addresses = _listening(port)
        # 127.0.0.1 as /proc writes it; Streamlit's own default (every interface) would be 00000000 or ::
        assert addresses == ["0100007F"], addresses
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_the_cli_binds_loopback_by_default_and_warns_otherwise(monkeypatch, tmp_path):
    runs = []
    monkeypatch.setattr(subprocess, "run", lambda command, env: runs.append((command, env))
                        or subprocess.CompletedProcess(command, 0))
    runner = CliRunner()
    local = runner.invoke(cli, ["app"])
    assert local.exit_code == 0 and "warning" not in local.stderr
    command, env = runs[-1]
    assert command[command.index("--server.address") + 1] == "127.0.0.1" and env["WORKBENCH_APP_HOST"] == "127.0.0.1"
    assert command[command.index("--server.maxUploadSize") + 1] == "32"
    shared = runner.invoke(cli, ["app", "--host", "0.0.0.0", "--allow-root", str(tmp_path), "--allow-root", "."])
    assert shared.exit_code == 0 and "warning: the dashboard listens on 0.0.0.0" in shared.stderr
    command, env = runs[-1]
    assert env["WORKBENCH_APP_HOST"] == "0.0.0.0"
    assert env["WORKBENCH_APP_ROOTS"].split(os.pathsep) == [str(tmp_path.resolve()), str(Path.cwd().resolve())]
    assert str(tmp_path.resolve()) in shared.stderr


def test_file_paths_in_an_analysis_config_are_checked_too(app_model, tmp_path, monkeypatch):
    outside = tmp_path / "outside" / "mine.txt"
    outside.parent.mkdir()
    outside.write_text("a private text\n")
    monkeypatch.setenv("WORKBENCH_APP_ROOTS", os.pathsep.join([str(tmp_path / "root"), str(app_model.folder)]))
    at = tab("Analyses")
    at.selectbox(key="name").set_value("rankme").run()
    at.text_area(key="config-rankme").set_value(json.dumps({"prompt_sets": {"mine": str(outside)}})).run()
    click(at, "go")
    refused(at, at, "config.prompt_sets.mine")
    assert "any_result" not in at.session_state


def test_a_computation_waits_while_another_tab_holds_the_shared_model(app_model):
    """Tabs share the cached model, and computations hook it or edit it for a while (capture, steering, low_rank):
    one at a time. Another tab (here a thread) holds the model's lock for a second; this tab's computation waits."""
    from workbench_app.common import _load, model_lock

    lock, held, hold_s = model_lock(_load(str(app_model.folder), "cpu")), threading.Event(), 1.5

    def other_tab():
        with lock:
            held.set()
            time.sleep(hold_s)

    at = tab("Model")
    thread = threading.Thread(target=other_tab)
    thread.start()
    held.wait(10)
    started = time.monotonic()
    click(at, "go")
    waited = time.monotonic() - started
    thread.join()
    assert waited >= hold_s * 0.9 and "model_result" in at.session_state
