"""Comparative figures across a sweep's cells, and the sweep's self-contained ``DIR/report.html``.

A sweep's numbers live in two long tables (:mod:`workbench.sweeps.store`): ``cells`` (one row per cell: model, label,
step, analysis, prompts, config, status, error, ...) and ``metrics`` (cell, analysis, metric, layer, site, value). The
figures are functions of those two DataFrames, so the report and the dashboard's Sweeps page draw the same thing.

How the figures read:

- one line per model/checkpoint (its label); the prompts and the config join the legend only when they differ between
  the analysis' cells. Checkpoints of one family (the folder holding them) share a palette colour, lighter for earlier
  steps, so a drift with training reads as a gradient.
- sites of different kinds (``hook_resid_post`` vs ``hook_attn_out``, ``W_Q`` vs ``W_K``) never share an axis: the kind
  is the site without its ``blocks.N.`` part, and a dropdown picks it when there are several (one figure per metric
  keeps the report short). Per-head rows (``W_Q.h3``) form their own kind, averaged over a layer's heads.
- a metric's summary is its mean over the layers (and heads) of one site kind, drawn against checkpoint step.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from workbench.atomic import umask_mode
from workbench.errors import config_error
from workbench.results import PALETTE, table_html

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["id", "label", "step", "analysis", "prompts", "config", "status", "seconds", "error"]
_BLOCK = re.compile(r"blocks\.\d+\.")
_HEAD = re.compile(r"\.h\d+$")
# Site kinds in the order a reader walks a block (TransformerLens names); other kinds follow by name.
KIND_ORDER = ("hook_resid_post", "hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "W_Q", "W_K",
              "W_V", "W_O", "W_in", "W_gate", "W_out", "W_E", "W_pos", "W_U")
_EARLIEST_SHADE = 0.65  # the earliest checkpoint of a family is its colour mixed this far towards white
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}
h1{margin-bottom:.2em}.wb-table{border-collapse:collapse;font-size:12px;margin:1em 0}
.wb-table td,.wb-table th{border:1px solid #ddd;padding:2px 6px;text-align:right}.wb-table th{background:#f4f4f4}
.summary{background:#f7f9fc;padding:.6em 1em;border-left:4px solid #4a7bd0}.failed{border-left-color:#d62728}
.pair{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}"""


# ---- the two tables -------------------------------------------------------------------------------------------------

def is_sweep(folder: Path) -> bool:
    """A sweep folder holds ``results.duckdb`` or a ``cells/`` folder.

    Example: ``is_sweep(Path("sweeps/readme"))  # True after run_sweep wrote it``"""
    return (folder / "results.duckdb").is_file() or (folder / "cells").is_dir()


def find_sweeps(folder: str | Path) -> list[Path]:
    """``folder`` itself when it is a sweep, then its sub-folders that are sweeps (sorted by name).

    Example: ``find_sweeps("sweeps")  # every sweep folder under sweeps/``"""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_sweep(p))
    return ([folder] if is_sweep(folder) else []) + children


def read_sweep(out: str | Path):
    """``(cells, metrics)`` DataFrames of a sweep folder, read without writing anything (safe beside a running sweep):
    from ``results.duckdb`` opened read-only, or from ``cells/*/cell.json`` (the source of truth) when the database
    is missing, damaged or held by the writer for longer than the store waits.

    Example: ``cells, metrics = read_sweep("sweeps/readme")``"""
    from workbench.sweeps.store import DB_NAME, ResultsStore

    out = Path(out)
    if (out / DB_NAME).is_file():
        store = ResultsStore(out / DB_NAME, read_only=True)
        try:
            return store.cells(), store.metrics()
        except Exception as exc:  # noqa: BLE001 - any database failure falls back to the cell folders
            log.warning("%s: could not read (%s: %s); reading the cell folders instead", store.path,
                        type(exc).__name__, exc)
    return _frames(out)


def _frames(out: Path):
    """The cell folders' records as the store's two tables."""
    import pandas as pd

    from workbench.sweeps.store import CELL_COLUMNS, METRIC_COLUMNS, read_records

    records = list(read_records(out))
    cells = pd.DataFrame([{k: r.get(k) for k in CELL_COLUMNS} for r in records], columns=list(CELL_COLUMNS))
    rows = [(r["id"], r.get("analysis"), *m) for r in records for m in r.get("metrics") or []]
    return cells, pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _report_tables(out: Path):
    """The report's tables, through the store (which rebuilds a missing or damaged database from the cell folders)."""
    from workbench.sweeps.store import open_store

    store = open_store(out)
    return store.cells(), store.metrics()


# ---- values ---------------------------------------------------------------------------------------------------------

def site_kind(site: Any) -> str:
    """The kind of a site: the site without its ``blocks.N.`` part; per-head matrices (``W_Q.h3``) are their own
    kind (``W_Q per head``).

    Example: ``site_kind("blocks.3.hook_resid_post")  # "hook_resid_post"``"""
    if not isinstance(site, str) or not site:
        return "(no site)"
    kind = _BLOCK.sub("", site, count=1)
    return _HEAD.sub("", kind) + " per head" if _HEAD.search(kind) else kind


def _missing(value: Any) -> bool:
    """None, NaN, NaT or pandas' NA (a scalar)."""
    import pandas as pd

    return value is None or (not isinstance(value, (list, dict, str)) and bool(pd.isna(value)))


def _objects(df, values: list) -> Any:
    """A column of Python values as they are (pandas would turn ``[3, None]`` into floats)."""
    import pandas as pd

    return pd.Series(values, index=df.index, dtype=object)


def _step(value: Any) -> int | None:
    return None if _missing(value) else int(value)


def _config_key(value: Any) -> str:
    """Canonical JSON of a cell's config (a dict, or JSON text as DuckDB returns it)."""
    if _missing(value) or value == "":
        return "{}"
    if isinstance(value, str):
        value = json.loads(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def config_text(value: Any) -> str:
    """A config as ``field=value, ...`` (``defaults`` when empty).

    Example: ``config_text({"per_head": True, "esd_matrix": "W_Q"})  # "esd_matrix=W_Q, per_head=true"``"""
    data = json.loads(_config_key(value))
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in data.items()) or "defaults"


def _prompts_text(prompts: Any) -> str:
    if _missing(prompts) or prompts == "-":
        return "no prompts"
    return prompts if str(prompts).startswith("bundled:") else Path(str(prompts)).name


def _family(model: Any, label: str) -> str:
    """Checkpoints of one family share the folder that holds them (``runs/ckpts/step-500`` -> ``runs/ckpts``); a
    bundled model with a step is its own family."""
    if _missing(model):
        return label
    model = str(model)
    return str(Path(model).parent) if ("/" in model or os.sep in model) else model


def _family_names(families: list[str]) -> dict[str, str]:
    """Short names for families: the folder's name, or its whole path where two folders share a name."""
    short = {f: Path(f).name or f for f in families}
    clash = {n for n in short.values() if list(short.values()).count(n) > 1}
    return {f: f if n in clash else n for f, n in short.items()}


def _shade(colour: str, towards_white: float) -> str:
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * towards_white):02x}" for c in rgb)


# ---- one metric's rows, with their lines ----------------------------------------------------------------------------

def _rows(call: str, metrics_df, cells_df, analysis: str, metric: str):
    """The metric's rows joined with their cells' label, step, prompts, config and model, plus ``kind``, ``line``
    (the legend entry), ``group`` (a family's line in the step figure), ``colour`` and ``group_colour``."""
    import pandas as pd

    df = metrics_df
    if cells_df is not None:
        cell_cols = [c for c in ("model", "label", "step", "prompts", "config") if c in cells_df.columns]
        df = df.drop(columns=[c for c in cell_cols if c in df.columns]).merge(
            cells_df[["id", *cell_cols]].rename(columns={"id": "cell"}), on="cell", how="left")
    missing = [c for c in ("label", "analysis", "metric", "layer", "site", "value") if c not in df.columns]
    if missing:
        raise config_error(call, "metrics_df", "the store's metrics joined with the cells' label, step, prompts and "
                           "config (or pass cells_df)", f"a table without {missing}")
    analyses = list(pd.unique(df["analysis"]))
    if analysis not in analyses:
        raise config_error(call, "analysis", f"one of {analyses}", analysis)
    df = df[df["analysis"] == analysis]
    metrics = list(pd.unique(df["metric"]))
    if metric not in metrics:
        raise config_error(call, "metric", f"one of the metrics of {analysis} {metrics}", metric)
    df = df[df["metric"] == metric].copy()
    for column, default in (("model", None), ("step", None), ("prompts", "-"), ("config", "{}")):
        if column not in df.columns:
            df[column] = default
    df["value"] = [float(v) if not _missing(v) and math.isfinite(float(v)) else math.nan for v in df["value"]]
    df["kind"] = _objects(df, [site_kind(s) for s in df["site"]])
    df["config"] = _objects(df, [_config_key(c) for c in df["config"]])
    df["step"] = _objects(df, [_step(s) for s in df["step"]])
    df["layer"] = _objects(df, [None if _missing(v) else int(v) for v in df["layer"]])
    for column in ("model", "label", "prompts"):
        df[column] = _objects(df, [None if _missing(v) else str(v) for v in df[column]])
    return _name_lines(df)


def _name_lines(df):
    keys = ["model", "label", "step", "prompts", "config"]
    lines = df[keys].drop_duplicates()
    lines["family"] = [_family(m, lb) if s is not None else f"{lb}\x00{m}" for m, lb, s in
                       zip(lines["model"], lines["label"], lines["step"], strict=True)]
    lines["stepped"] = [s is not None for s in lines["step"]]  # separate models first, then checkpoint families
    lines = lines.sort_values(["stepped", "family", "prompts", "config", "step", "label"], key=lambda c: c.map(
        lambda v: (-1 if v is None else v) if c.name == "step" else str(v))).reset_index(drop=True)
    extras = [(lines[c].nunique() > 1, f) for c, f in (("prompts", _prompts_text), ("config", config_text))]
    suffix = ["".join(f" · {f(row[c])}" for (vary, f), c in zip(extras, ("prompts", "config"), strict=True) if vary)
              for _, row in lines.iterrows()]
    steps_per_label = {lb: len(set(g)) for lb, g in lines.groupby("label")["step"]}
    repeated = [steps_per_label.get(lb, 1) > 1 for lb in lines["label"]]  # one label on several steps: name the step
    names = [f"{lb} (step {s})" if rep and s is not None else lb
             for lb, s, rep in zip(lines["label"], lines["step"], repeated, strict=True)]
    if len(set(zip(names, lines["model"], strict=True))) > len(set(names)):  # one label on two models
        names = [f"{n} [{m}]" for n, m in zip(names, lines["model"], strict=True)]
    lines["line"] = [n + s for n, s in zip(names, suffix, strict=True)]
    short = _family_names(sorted({f for f, s in zip(lines["family"], lines["step"], strict=True) if s is not None}))
    lines["group"] = [(lb if s is None else short[f]) + x for f, lb, s, x in
                      zip(lines["family"], lines["label"], lines["step"], suffix, strict=True)]
    lines["group_colour"], lines["colour"] = _colours(lines)
    lines["order"] = range(len(lines))
    df = df.merge(lines[[*keys, "line", "group", "colour", "group_colour", "order"]], on=keys, how="left")
    return df.sort_values("order", kind="stable")  # the figures draw (and the legend lists) lines in this order


def _colours(lines) -> tuple[list[str], list[str]]:
    """A palette colour per family (or per line outside families), shaded by step rank inside a family."""
    keys = list(zip(lines["family"], lines["prompts"], lines["config"], strict=True))
    order = list(dict.fromkeys(keys))
    base = [PALETTE[order.index(k) % len(PALETTE)] for k in keys]
    stepped = [k for k, s in zip(keys, lines["step"], strict=True) if s is not None]  # sorted by step within a key
    shaded, seen = [], dict.fromkeys(keys, 0)
    for key, colour, step in zip(keys, base, lines["step"], strict=True):
        n = stepped.count(key)
        if step is None or n < 2:
            shaded.append(colour)
            continue
        shaded.append(_shade(colour, _EARLIEST_SHADE * (1 - seen[key] / (n - 1))))
        seen[key] += 1
    return base, shaded


def _kinds(df) -> list[str]:
    """The site kinds in a stable order: kinds with layers before those without (embeddings), then in the block's
    order (``KIND_ORDER``; the residual stream first, the usual first look), then by name; so a layer figure and its
    step figure open on the same kind."""
    layered = set(df.loc[df["layer"].notna(), "kind"])
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(set(df["kind"]), key=lambda k: (k not in layered, rank.get(k.removesuffix(" per head"),
                                                                               len(rank)), k.lower()))


def _kind_menu(fig, owners: list[str], kinds: list[str], title: str) -> None:
    """The title, and a dropdown that shows one site kind's traces at a time (with one kind: its name in the
    title instead)."""
    fig.update_layout(title={"text": title + (f" — {kinds[0]}" if len(kinds) == 1 else "")})
    if len(kinds) < 2:
        return
    buttons = [{"label": k, "method": "restyle", "args": [{"visible": [o == k for o in owners]}]} for k in kinds]
    fig.update_layout(updatemenus=[{"buttons": buttons, "direction": "down", "showactive": True, "x": 1.0,
                                    "xanchor": "right", "y": 1.02, "yanchor": "bottom"}])


def _figure(x_title: str, y_title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title, height=440, hovermode="closest",
                      legend={"title": {"text": "model / checkpoint"}}, margin={"t": 80})
    return fig


# ---- the figures ----------------------------------------------------------------------------------------------------

def layer_figure(metrics_df, analysis: str, metric: str, *, cells_df=None):
    """``metric`` per layer for ``analysis``: one line per model/checkpoint (label; prompts and config in the legend
    when they vary), a dropdown over site kinds. ``metrics_df`` is the store's metrics table; when it lacks the cells'
    columns (label, step, prompts, config), pass the cells table as ``cells_df``. Rows without a layer (embeddings)
    are left out here; they appear in :func:`step_figure`.

    Example: ``layer_figure(metrics, "activation_spectra", "erank (centred)", cells_df=cells).show()``"""
    import plotly.graph_objects as go

    df = _rows("layer_figure", metrics_df, cells_df, analysis, metric)
    df = df[df["layer"].notna()]
    kinds = _kinds(df)
    fig = _figure("layer", metric)
    owners = []
    for kind in kinds:
        for line, rows in df[df["kind"] == kind].groupby("line", sort=False):
            means = rows.groupby("layer")["value"].mean().sort_index()  # heads of one layer: their mean
            step = rows["step"].iloc[0]
            fig.add_trace(go.Scatter(
                x=means.index.to_numpy(dtype=int), y=means.to_numpy(dtype=float), name=line, mode="lines+markers",
                legendgroup=line, visible=kind == kinds[0], line={"color": rows["colour"].iloc[0]},
                hovertemplate=_hover(line, step, kind, "layer %{x}", f"{metric} %{{y:.4g}}")))
            owners.append(kind)
    _kind_menu(fig, owners, kinds, f"{metric} per layer")
    if kinds:  # whole layers only: a tick at 0.5 reads as a layer that does not exist
        fig.update_xaxes(tick0=0, dtick=max(1, math.ceil((max(df["layer"]) + 1) / 16)))
    if not kinds:
        fig.add_annotation(text=f"{metric} has no per-layer values", showarrow=False, xref="paper", yref="paper",
                           x=0.5, y=0.5)
    return fig


def step_figure(cells_df, metrics_df, analysis: str, metric: str):
    """The mean of ``metric`` over the layers (and heads) of each site kind against checkpoint step, one line per
    family of checkpoints (with its prompts and config when they vary); None when no cell of ``analysis`` has a
    step.

    Example: ``step_figure(cells, metrics, "weight_spectra", "α")  # None: no cell of the sweep has a step``"""
    import plotly.graph_objects as go

    df = _rows("step_figure", metrics_df, cells_df, analysis, metric)
    df = df[df["step"].notna()]
    if df.empty:
        return None
    df = df.astype({"step": int})
    kinds = _kinds(df)
    fig = _figure("checkpoint step", f"{metric} (mean over layers)")
    owners = []
    for kind in kinds:
        for group, rows in df[df["kind"] == kind].groupby("group", sort=False):
            per_cell = rows.groupby(["step", "cell"])["value"].mean()
            means = per_cell.groupby(level="step").mean().sort_index()
            fig.add_trace(go.Scatter(
                x=means.index.to_numpy(dtype=int), y=means.to_numpy(dtype=float), name=group, mode="lines+markers",
                visible=kind == kinds[0], line={"color": rows["group_colour"].iloc[0]},
                hovertemplate=_hover(group, None, kind, "step %{x}", f"mean {metric} %{{y:.4g}}")))
            owners.append(kind)
    _kind_menu(fig, owners, kinds, f"mean {metric} vs step")
    fig.update_layout(showlegend=True, legend_title_text="checkpoints of")
    return fig


def _hover(name: str, step: int | None, kind: str, x: str, y: str) -> str:
    name = html.escape(name).replace("%{", "% {")
    return "<br>".join([f"<b>{name}</b>", *([f"step {step}"] if step is not None else []), html.escape(kind), x, y]
                       ) + "<extra></extra>"


# ---- the report -----------------------------------------------------------------------------------------------------

def counts_line(cells_df) -> str:
    """``N cells: D done, F failed`` (other statuses named too).

    Example: ``counts_line(store.cells())  # e.g. "3 cells: 3 done, 0 failed"``"""
    counts = cells_df["status"].value_counts().to_dict() if len(cells_df) else {}
    parts = [f"{counts.pop('done', 0)} done", f"{counts.pop('failed', 0)} failed"]
    parts += [f"{n} {status}" for status, n in sorted(counts.items())]
    return f"{_plural(len(cells_df), 'cell')}: {', '.join(parts)}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cells_table(cells_df) -> tuple[list[str], list[list[Any]]]:
    """``(header, rows)`` of the cells: id, label, step, analysis, prompts, config, status, seconds, error.

    Example: ``header, rows = cells_table(store.cells())``"""
    rows = []
    for _, c in cells_df.iterrows():
        rows.append([c["id"], c["label"], "-" if _step(c.get("step")) is None else _step(c["step"]), c["analysis"],
                     _prompts_text(c.get("prompts")), config_text(c.get("config")), c["status"],
                     math.nan if _missing(c.get("seconds")) else float(c["seconds"]),
                     "" if _missing(c.get("error")) else str(c["error"])])
    return TABLE_COLUMNS, rows


def report_html(out: str | Path, cells_df, metrics_df) -> str:
    """The sweep report as one HTML page (plotly.js inlined once; it opens offline).

    Example: ``Path("page.html").write_text(report_html("sweeps/readme", *read_sweep("sweeps/readme")))``"""
    from plotly.offline import get_plotlyjs

    out = Path(out)
    title = f"Sweep {html.escape(out.resolve().name)}"
    head = (f"<h1>{title}</h1><p>{html.escape(str(out.resolve()))} — {html.escape(counts_line(cells_df))}</p>")
    if not len(cells_df):
        body = (f"<p class='summary'>This sweep holds no cells yet: no results in {html.escape(str(out))} (run "
                "<code>workbench sweep SPEC --out DIR</code>; <code>workbench sweep --reindex DIR</code> rebuilds the "
                "database from DIR/cells).</p>")
    else:
        body = _failed_html(cells_df) + "".join(_analysis_html(a, cells_df, metrics_df)
                                                for a in dict.fromkeys(cells_df["analysis"]))
        body += f"<h2>Cells</h2>{table_html(*cells_table(cells_df))}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{head}{body}</body></html>")


def _failed_html(cells_df) -> str:
    failed = cells_df[cells_df["status"] == "failed"]
    if failed.empty:
        return ""
    rows = [[c["id"], c["label"], c["analysis"], _prompts_text(c.get("prompts")), config_text(c.get("config")),
             "" if _missing(c.get("error")) else str(c["error"])] for _, c in failed.iterrows()]
    return (f"<h2>Failed cells</h2><p class='summary failed'>{_plural(len(failed), 'cell')} failed; each one's traceback is in "
            "cells/&lt;id&gt;/error.txt, and a re-run of the same command runs them again.</p>"
            + table_html(["id", "label", "analysis", "prompts", "config", "error"], rows))


def _analysis_html(analysis: str, cells_df, metrics_df) -> str:
    import pandas as pd

    mine = cells_df[cells_df["analysis"] == analysis]
    done = int((mine["status"] == "done").sum())
    rows = metrics_df[metrics_df["analysis"] == analysis]
    heading = f"<section id='{html.escape(analysis)}'><h2>{html.escape(_title(analysis))}</h2>"
    if rows.empty:
        return heading + (f"<p class='summary failed'>No metrics: {_plural(len(mine), 'cell')}, {done} done.</p></section>")
    has_steps = any(_step(s) is not None for s in mine["step"])
    parts = [f"<p class='summary'>{_plural(len(mine), 'cell')} ({done} done). Each metric per layer, one line per "
             "model/checkpoint; pick the site kind in a figure's menu."
             + (" Beside it, the metric's mean over layers against checkpoint step." if has_steps else "") + "</p>"]
    for metric in sorted(pd.unique(rows["metric"]), key=str.lower):
        figs = [layer_figure(rows, analysis, metric, cells_df=cells_df)] if rows.loc[
            rows["metric"] == metric, "layer"].notna().any() else []
        step = step_figure(cells_df, rows, analysis, metric) if has_steps else None
        figs += [step] if step is not None else []
        divs = "".join(f"<div>{_div(f)}</div>" for f in figs)
        parts.append(f"<h3>{html.escape(str(metric))}</h3><div class='{'pair' if len(figs) > 1 else ''}'>{divs}</div>")
    return heading + "".join(parts) + "</section>"


def _div(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, default_width="100%", config={"responsive": True})


def _title(analysis: str) -> str:
    from workbench import registry

    try:
        return f"{registry.get(analysis).result.title} ({analysis})"
    except Exception:  # noqa: BLE001 - an analysis no longer installed still gets its section
        return analysis


def write_sweep_report(out: str | Path) -> Path:
    """Write ``out/report.html`` from the sweep's results (read through the store) atomically: a temporary file in
    ``out`` renamed over the old report, so a reader never sees half a page.

    Example: ``write_sweep_report("sweeps/readme")  # sweeps/readme/report.html``"""
    out = Path(out)
    if not out.is_dir():
        raise config_error("write_sweep_report", "out", "a sweep folder", str(out))
    cells, metrics = _report_tables(out)
    text = report_html(out, cells, metrics)
    target = out / "report.html"
    fd, tmp = tempfile.mkstemp(prefix=".report.html.tmp-", dir=out)
    try:
        os.fchmod(fd, umask_mode(0o666))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


__all__ = ["config_text", "counts_line", "cells_table", "find_sweeps", "is_sweep", "layer_figure", "read_sweep",
           "report_html", "site_kind", "step_figure", "write_sweep_report"]
