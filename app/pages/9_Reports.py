"""Reports: open past JSON reports (from a folder inside the allowed roots, or uploaded, at most 32 MiB each) and
compare two side by side."""

import json

import streamlit as st

from workbench.report import Report
from workbench_app.common import MAX_REPORT_BYTES, local_path, share_notice, show_result, upload_bytes


@st.cache_resource(show_spinner=False, max_entries=64)
def load(path: str, mtime: float) -> Report:
    """Parsed once per file version (``mtime`` in the key), not on every rerun of the page."""
    return Report.load(path)


st.set_page_config(page_title="Reports · workbench", layout="wide")
st.title("Reports")
share_notice()
folder = st.text_input("Folder searched for report.json files", "reports", key="folder")
root = local_path("reports folder", folder.strip() or ".")
found = sorted(p for p in root.glob("**/report.json") if p.resolve().is_relative_to(root)) if root.is_dir() else []
uploads = st.file_uploader("…or upload report.json files", type=["json"], accept_multiple_files=True, key="uploads")
reports: dict[str, Report] = {}
for path in found:
    try:
        reports[str(path)] = load(str(path), path.stat().st_mtime)
    except Exception as exc:  # noqa: BLE001 - a broken file is listed, not fatal
        st.warning(f"{path}: not a workbench report ({type(exc).__name__}: {exc})")
for up in uploads or []:
    data = upload_bytes(st, up, MAX_REPORT_BYTES)
    if data is None:
        continue
    try:
        reports[f"upload: {up.name}"] = Report.from_dict(json.loads(data.decode("utf-8")))
    except Exception as exc:  # noqa: BLE001
        st.error(f"{up.name}: not a workbench report ({type(exc).__name__}: {exc})")
if not reports:
    st.info("No reports yet: run `make report` (or the CLI) or upload a report.json.")
    st.stop()
if any(c not in reports for c in st.session_state.get("chosen", [None])):  # first visit or another folder
    st.session_state["chosen"] = list(reports)[:1]
chosen = st.multiselect("Open one report, or pick two to compare", list(reports), max_selections=2, key="chosen")
if len(chosen) == 1:
    report = reports[chosen[0]]
    st.caption(", ".join(f"{k}: {v}" for k, v in report.provenance.items() if k in ("model", "date", "duration_s")))
    for i, (name, result) in enumerate(report.results.items()):
        show_result(name, result, key=f"r0-{i}-{name}")
elif len(chosen) == 2:
    a, b = (reports[c] for c in chosen)
    keys = sorted(set(a.provenance) | set(b.provenance))
    st.subheader("Provenance")
    st.dataframe([{"field": k, "A": str(a.provenance.get(k, "—")), "B": str(b.provenance.get(k, "—")),
                   "differs": a.provenance.get(k) != b.provenance.get(k)} for k in keys], hide_index=True,
                 key="provenance")
    shared = [n for n in a.results if n in b.results]
    only = sorted(set(a.results) ^ set(b.results))
    if only:
        st.caption(f"In one report only: {', '.join(only)}")
    for name in shared:
        st.subheader(a.results[name].title)
        left, right = st.columns(2)
        for column, report, tag in ((left, a, "A"), (right, b, "B")):
            result = report.results[name]
            column.markdown(f"**{tag}** — {result.summary()}")
            column.plotly_chart(result.figures()[0], key=f"cmp-{tag}-{name}")
