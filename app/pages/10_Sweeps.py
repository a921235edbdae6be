"""Sweeps: open a sweep folder (``workbench sweep SPEC --out DIR``) and compare its cells from the results database —
a metric per layer with one line per model/checkpoint, its mean over layers against checkpoint step, and the cells
with their status and errors. The page only reads: the database opens read-only (the cell folders are read instead
while it is missing or busy), so it is safe to watch a sweep that is still running."""

from pathlib import Path

import pandas as pd
import streamlit as st

from workbench.sweeps.compare import cells_table, counts_line, find_sweeps, layer_figure, read_sweep, step_figure
from workbench_app.common import guard, local_path, share_notice


@st.cache_data(show_spinner=False, max_entries=8)
def load(path: str, stamp: tuple[int, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sweep's two tables, read again only when ``stamp`` (its files' modification times) changes."""
    return read_sweep(path)


def stamp(folder: Path) -> tuple[int, ...]:
    """Changes whenever the sweep writes: the database (and its log) or the cells folder, which a finished cell's
    folder is renamed into."""
    paths = (folder / "results.duckdb", folder / "results.duckdb.wal", folder / "cells")
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


def keep_valid(key: str, options: list[str]) -> None:
    """Forget a widget's value that the newly opened sweep does not offer (it then starts at the first option)."""
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)


st.set_page_config(page_title="Sweeps · workbench", layout="wide")
st.title("Sweeps")
folder = st.text_input("Sweep folder, or a folder holding sweeps", "sweeps", key="folder",
                       help="The --out folder of `workbench sweep` (it holds results.duckdb and cells/)")
share_notice()
local_path("sweep folder", folder.strip() or ".")  # only inside the allowed roots
sweeps = [str(p) for p in find_sweeps(folder.strip())]
if not sweeps:
    st.info(f"No sweep in {folder!r}: a sweep folder holds results.duckdb or cells/. Run `workbench sweep SPEC.toml "
            f"--out {folder.strip() or 'DIR'}/NAME` first, or type another folder.")
    st.stop()
keep_valid("sweep", sweeps)
chosen = st.selectbox("Sweep", sweeps, key="sweep")
st.button("Reload", key="reload", help="Read the sweep again (a running sweep adds cells as they finish)")
with guard(f"Could not read the sweep in {chosen}"):
    cells, metrics = load(chosen, stamp(Path(chosen)))
st.caption(counts_line(cells))
if cells.empty:
    st.info(f"{chosen} holds no cells yet: they appear here as the sweep finishes them.")
    st.stop()

analyses = list(dict.fromkeys(cells["analysis"]))
keep_valid("analysis", analyses)
pick_analysis, pick_metric = st.columns(2)
analysis = pick_analysis.selectbox("Analysis", analyses, key="analysis")
names = sorted(set(metrics.loc[metrics["analysis"] == analysis, "metric"]), key=str.lower)
if not names:
    st.warning(f"No metrics for {analysis}: none of its cells has finished (see the cells below).")
else:
    keep_valid("metric", names)
    metric = pick_metric.selectbox("Metric", names, key="metric")
    with guard("Could not draw the figures"):
        by_layer = layer_figure(metrics, analysis, metric, cells_df=cells)
        by_step = step_figure(cells, metrics, analysis, metric)
    left, right = st.columns(2)
    left.plotly_chart(by_layer, key="layer-figure")
    if by_step is not None:
        right.plotly_chart(by_step, key="step-figure")
    else:
        right.caption("No checkpoint steps among this analysis' cells: the figure against step needs models with a "
                      "step (a glob over checkpoint folders, or `step = N` in the spec).")

st.subheader("Cells")
failed = int((cells["status"] == "failed").sum())
if failed:
    st.error(f"{failed} of {len(cells)} cells failed: their errors are in the table (tracebacks in "
             f"{chosen}/cells/<id>/error.txt); re-running the sweep's command runs them again.")
header, rows = cells_table(cells)
st.dataframe(pd.DataFrame(rows, columns=header), hide_index=True, key="cells")
