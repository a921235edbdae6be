"""What every dashboard page shares: the model picker, running work with a progress bar and a Cancel button,
readable errors, prompt input (bundled, pasted or uploaded), and showing a result with its downloads.

Pages call the workbench API through these helpers and do no computation of their own. The loaded model is cached
with ``st.cache_resource`` (one per source and device); a page's last result lives in ``st.session_state`` so that
widgets can be changed without recomputing.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

import workbench
from workbench.cli import APP_HOST_ENV, APP_MAX_UPLOAD_MB, APP_ROOTS_ENV, is_loopback
from workbench.errors import WorkbenchError
from workbench.models.bundled import get_bundled
from workbench.models.cache import cache_root
from workbench.models.loaded import LoadedModel
from workbench.progress import reporting
from workbench.prompts import categories, default_prompts, parse_prompts
from workbench.report import Report, package_versions
from workbench.validation import check_within

DEFAULT_MODEL = "smollm2-135m"  # WORKBENCH_APP_MODEL overrides it (read at every run: tests point it at tiny models)
MAX_UPLOAD_BYTES = 8 * 2**20  # prompts and pair files; reports get MAX_REPORT_BYTES
MAX_REPORT_BYTES = APP_MAX_UPLOAD_MB * 2**20  # also the server's own limit (`workbench app`, .streamlit/config.toml)
ROOTS_ENV = APP_ROOTS_ENV
HOST_ENV = APP_HOST_ENV


@contextlib.contextmanager
def guard(what: str = "") -> Iterator[None]:
    """Show an exception as a readable message (details folded away) and stop the page; Streamlit's own control
    flow (rerun, stop) passes through."""
    try:
        yield
    except WorkbenchError as exc:
        st.error(f"{what + ': ' if what else ''}{exc}")
        st.stop()
    except Exception as exc:  # noqa: BLE001 - anything else still gets a message, not a traceback wall
        st.error(f"{what + ': ' if what else ''}{type(exc).__name__}: {exc}")
        with st.expander("Details"):
            st.code("".join(traceback.format_exception(exc))[-4000:])
        st.stop()


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(source: str, device: str):
    return workbench.load_model(source, device=device)


@st.cache_resource(show_spinner=False)
def _locks() -> tuple[threading.Lock, weakref.WeakKeyDictionary]:
    return threading.Lock(), weakref.WeakKeyDictionary()


def model_lock(lm: LoadedModel) -> threading.RLock:
    """The lock of one model in memory, shared by every tab of this server. Why: tabs run in threads of one process
    and share the cached model, and a computation hooks it (capture, steering, patching) or edits it for a while
    (the low_rank and steer2edit analyses truncate or edit and restore): two at once would record, steer or
    truncate each other's forward passes. A tab's own edited copy has its own lock."""
    guard_lock, locks = _locks()
    with guard_lock:
        return locks.setdefault(lm.model, threading.RLock())


@contextlib.contextmanager
def exclusive(lm: LoadedModel) -> Iterator[None]:
    """Hold ``lm``'s lock for the block; while another tab holds it, say so and wait (a Cancel still reruns the page:
    the message is refreshed every quarter second, and a refresh is where Streamlit stops a script)."""
    lock = model_lock(lm)
    if not lock.acquire(blocking=False):
        note, started = st.empty(), time.monotonic()
        while not lock.acquire(timeout=0.25):
            note.info(f"Waiting for another tab's computation on this model ({time.monotonic() - started:.0f} s): "
                      f"one computation at a time on a shared model.")
        note.empty()
    try:
        yield
    finally:
        lock.release()


def devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if torch.backends.mps.is_available() else [])


def app_roots() -> list[Path]:
    """The folders a typed path must lie in: ``$WORKBENCH_APP_ROOTS`` (os.pathsep-separated; set by ``workbench app
    --allow-root``) when set, else the working directory and the workbench cache."""
    listed = [r for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    return [Path(r).expanduser().resolve() for r in listed] if listed else [Path.cwd().resolve(), cache_root().resolve()]


def local_path(name: str, path: str, where=st) -> Path:
    """``path`` resolved when it lies inside the allowed roots; otherwise a one-line message in ``where`` naming the
    parameter and the roots, and the page stops."""
    try:
        return check_within("dashboard", name, path, app_roots())
    except WorkbenchError as exc:
        where.error(str(exc))
        st.stop()


def config_paths(data: Any, where=st, prefix: str = "config") -> None:
    """Every string in a JSON config that looks like a path (holds a separator or starts with ``~``) must lie inside
    the allowed roots: analyses read prompt and pair files named in their configs. A bare name such as
    ``bundled:prose`` or ``report`` holds no separator and resolves, if at all, inside the working directory."""
    if isinstance(data, dict):
        for key, value in data.items():
            config_paths(value, where, f"{prefix}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            config_paths(value, where, f"{prefix}[{i}]")
    elif isinstance(data, str) and (data.startswith("~") or "/" in data or os.sep in data):
        local_path(prefix, data, where=where)


def upload_bytes(where, upload, limit: int = MAX_UPLOAD_BYTES) -> bytes | None:
    """An uploaded file's bytes, or None with a message in ``where`` when it is over ``limit``."""
    size = upload.size if getattr(upload, "size", None) is not None else len(upload.getvalue())
    if size > limit:
        where.error(f"{upload.name}: {size / 2**20:.1f} MiB is over the {limit / 2**20:.1f} MiB limit")
        return None
    return upload.getvalue()


def share_notice() -> None:
    """A sidebar warning when the server listens beyond this machine: ``workbench app --host`` other than loopback,
    or ``streamlit run`` without ``--server.address`` started outside the repository (whose
    ``.streamlit/config.toml`` binds 127.0.0.1), where Streamlit listens on every interface. In that second case
    the terminal gets the warning too, once (``workbench app`` prints its own)."""
    global _TERMINAL_WARNED
    host = os.environ.get(HOST_ENV) or st.get_option("server.address")
    if is_loopback(host):
        return
    where = host or "every network interface (Streamlit's default when started without --server.address)"
    st.sidebar.warning(f"Shared: this dashboard listens on {where}, so anyone who can reach this machine can use "
                       f"it. Folders are limited to {', '.join(str(r) for r in app_roots())}; uploads are "
                       f"size-bounded; your weight edits stay in your tab.")
    if not os.environ.get(HOST_ENV) and not _TERMINAL_WARNED:
        _TERMINAL_WARNED = True
        logging.getLogger("workbench.app").warning(
            "the dashboard listens on %s: anyone who can reach this machine can use it. Start it with `workbench app` "
            "(127.0.0.1 unless --host is given) or pass --server.address 127.0.0.1", where)


_TERMINAL_WARNED = False  # the terminal warning of share_notice() is given once per server process


def own_model(lm: LoadedModel) -> LoadedModel:
    """This tab's private deep copy of the shared cached ``lm`` (made once, then kept in the session): edits go to it
    so that other tabs, which use the cached model, never see them. Costs the model's memory again while it lasts."""
    held = st.session_state.get("own_model")
    if held is None or (held[0] is not lm and held[1] is not lm):
        held = st.session_state["own_model"] = (lm, copy.deepcopy(lm))
    return held[1]


def drop_own_model() -> None:
    """Forget this tab's private copy (after a revert): the tab uses the shared cached model again."""
    st.session_state.pop("own_model", None)


def model():
    """The sidebar's model (a bundled name such as ``smollm2-135m`` / ``gemma3-270m`` or a local folder inside the
    allowed roots): the cached model shared by every tab, or this tab's own copy while it carries an edit."""
    share_notice()
    st.sidebar.header("Model")
    source = st.sidebar.text_input("Bundled model name or local folder", key="model_source",
                                   value=os.environ.get("WORKBENCH_APP_MODEL", DEFAULT_MODEL),
                                   help="smollm2-135m (default) or gemma3-270m, or a folder with a Hugging Face model "
                                        "and its tokenizer")
    device = st.sidebar.selectbox("Device", devices(), key="device")
    if get_bundled(source.strip()) is None:  # a folder: only inside the allowed roots
        local_path("model folder", source.strip(), where=st.sidebar)
    with guard(f"Could not load {source!r}"), st.spinner(f"Loading {source} (converted once, then cached)…"):
        lm = _load(source.strip(), device)
    held = st.session_state.get("own_model")
    if held is not None and held[0] is lm:
        lm = held[1]
    facts = lm.facts
    st.sidebar.caption(f"{lm.name}: {facts.n_layers} layers, d_model {facts.d_model}, {facts.n_heads} heads")
    handle = st.session_state.get("edit_handle")
    if handle is not None and handle.active and handle.lm is lm:
        st.sidebar.warning("This tab's model weights carry a Steer2Edit edit: every page computes with them in "
                           "this tab (other tabs use the unedited model) until you revert it on the Steering and "
                           "edits page.")
    return lm


def run(label: str, fn: Callable[..., Any], *args: Any, spinner: bool = True, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with a progress bar fed by the library's bars and a Cancel button (clicking it
    reruns the page, which stops the work at its next step — for generation, at the next token; hooks and edits are
    released by the library). The model among the arguments is held (``exclusive``) while the work runs. ``spinner=False`` for work whose bar moves often (generation reports every token), so
    the bar alone shows progress."""
    cancel = st.empty()
    cancel.button("Cancel", key=f"cancel-{label}", help="Stops the work at its next step")
    bar = st.progress(0.0, text=f"{label}…")

    def callback(desc: str, done: int, total: int | None) -> None:
        frac = min(1.0, done / total) if total else 0.0
        bar.progress(frac, text=f"{label} — {desc}: {done}/{total if total else '?'}")

    models = [a for a in (*args, *kwargs.values()) if isinstance(a, LoadedModel)]
    with guard(label), (exclusive(models[0]) if models else contextlib.nullcontext()), reporting(callback), \
            (st.spinner(f"{label}…") if spinner else contextlib.nullcontext()):
        out = fn(*args, **kwargs)
    bar.empty()
    cancel.empty()
    return out


def uploaded(where, label: str, types: list[str], key: str, parse: Callable[..., list]) -> list | None:
    """The parsed content of a file uploaded in ``where`` (``st`` or a column), or None — with the parser's message
    shown when the file is refused (empty, binary, not UTF-8, wrong fields, over 8 MiB)."""
    upload = where.file_uploader(label, type=types, key=key)
    if upload is None:
        return None
    try:
        return parse(upload.name, upload.getvalue(), max_bytes=MAX_UPLOAD_BYTES)
    except WorkbenchError as exc:
        where.error(str(exc))
        return None


def prompts_input(key: str, default_category: str = "prose") -> list[str] | None:
    """Prompts from the bundled passages (by category), pasted text (one per line) or an uploaded .txt/.jsonl
    (refused with a message when empty, binary, not UTF-8, with the wrong JSONL fields, or over 8 MiB)."""
    source = st.radio("Prompts", ["Bundled", "Paste", "Upload"], horizontal=True, key=f"{key}-source")
    if source == "Bundled":
        cats = st.multiselect("Categories", categories(), default=[default_category], key=f"{key}-cats")
        texts = [t for c in cats for t in default_prompts(c)]
    elif source == "Paste":
        text = st.text_area("One prompt per line", key=f"{key}-paste", height=150)
        texts = [line for line in text.splitlines() if line.strip()]
    else:
        texts = uploaded(st, "A .txt (one prompt per line) or .jsonl ({\"text\": ...} per line)", ["txt", "jsonl"],
                         f"{key}-upload", parse_prompts)
        if texts is None:
            return None
    if not texts:
        st.warning("No prompts yet.")
        return None
    st.caption(f"{len(texts)} prompts")
    return texts


def single_report(name: str, result, lm: LoadedModel | None = None) -> Report:
    prov = {"model": lm.name if lm is not None else getattr(result, "model", ""), "source": "dashboard",
            "versions": package_versions()}
    return Report(results={name: result}, provenance=prov)


def table_frame(result) -> pd.DataFrame:
    """The result's table as a DataFrame; a column mixing numbers and text (e.g. "-" for undefined) becomes text,
    which Arrow needs."""
    header, rows = result.table()
    frame = pd.DataFrame([[json.dumps(v) if isinstance(v, (dict, list)) else v for v in row] for row in rows],
                         columns=header)
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float, bool}:
            frame[column] = frame[column].map(lambda v: "" if v is None else str(v))
    return frame


def show_result(name: str, result, *, lm: LoadedModel | None = None, key: str = "") -> None:
    """Summary, figures, table and JSON/HTML downloads of one analysis result."""
    key = key or name
    st.subheader(result.title)
    if result.summary():
        st.info(result.summary())
    for i, fig in enumerate(result.figures()):
        st.plotly_chart(fig, key=f"{key}-fig-{i}")
    header, _ = result.table()
    if header:
        st.dataframe(table_frame(result), key=f"{key}-table", hide_index=True)
    left, right = st.columns(2)
    left.download_button("Download JSON", result.to_json(), file_name=f"{name}.json", mime="application/json",
                         key=f"{key}-json")
    right.download_button("Download HTML", single_report(name, result, lm).to_html(), file_name=f"{name}.html",
                          mime="text/html", key=f"{key}-html")
