"""Base classes for analysis configs and results: frozen, JSON round-trippable, renderable.

A result is a frozen dataclass whose fields are JSON values (str, int, float, bool, lists and dicts of them), stored
column-wise so they serialise without custom code. ``to_dict`` adds a ``kind`` key naming the class, which
``from_dict`` checks and :func:`workbench.registry.result_from_dict` uses to dispatch.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import numbers
import re
from typing import Any, ClassVar

from workbench.errors import ConfigError, config_error
from workbench.validation import Constraint


class Serialisable:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` for a frozen dataclass with JSON-valued fields."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise config_error(f"{cls.__name__}.from_dict", "data['kind']", repr(cls.kind), kind)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise config_error(f"{cls.__name__}.from_dict", "data", f"only the keys {sorted(names)}", unknown)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


# Line colours shared by the analyses' plots (plotly's default sequence), so a dataset keeps its colour across figures.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def table_figure(title: str, header: list[str], rows: list[list[Any]]) -> Any:
    """A plotly table (for lists a reader scans in the report: edited components, example generations)."""
    import plotly.graph_objects as go

    columns = [[fmt(row[i]) if not isinstance(row[i], str) else row[i] for row in rows] for i in range(len(header))]
    widths = [min(60, max([len(h)] + [len(str(c)) for c in col])) + 4 for h, col in zip(header, columns)]
    fig = go.Figure(go.Table(header={"values": header, "align": "left"}, columnwidth=widths,
                             cells={"values": columns, "align": "left", "height": 26}))
    share = [w / sum(widths) for w in widths]  # a cell shows ~150·share characters per line at the report's width
    lines = sum(max(1, *(math.ceil(len(str(c)) / max(8, 150 * f)) for c, f in zip(row, share))) for row in rows)
    fig.update_layout(title=title, height=120 + 20 * lines + 8 * len(rows), margin={"t": 60, "b": 10})
    return fig


class Config(Serialisable):
    """Base of analysis configs. ``constraints`` maps every field to a :class:`workbench.validation.Constraint`
    (``{"n_values": Int(low=1), "kinds": ListOf(Choice(KINDS), nonempty=True)}``); ``validate``, run on
    construction, checks each field against its entry and raises ConfigError naming the field. A rule across fields
    goes in a ``validate`` override that calls ``super().validate()`` first and then ``self.check``."""

    constraints: ClassVar[dict[str, Constraint]] = {}

    def validate(self) -> None:
        cls = type(self)
        names = [f.name for f in dataclasses.fields(self)]
        missing, unknown = [n for n in names if n not in cls.constraints], sorted(set(cls.constraints) - set(names))
        if missing or unknown:
            raise TypeError(f"{cls.__name__}.constraints must have one entry per field: missing {missing}, "
                            f"not fields {unknown}")
        for name in names:
            cls.constraints[name].check(cls.__name__, name, getattr(self, name))

    def __post_init__(self) -> None:
        self.validate()

    def check(self, name: str, ok: bool, allowed: str) -> None:
        """A rule the table cannot say (across fields): raise ConfigError naming ``name`` unless ``ok``."""
        if not ok:
            raise config_error(type(self).__name__, name, allowed, getattr(self, name))


class Result(Serialisable):
    """Base of analysis results: ``plot()`` returns a plotly Figure, ``table()`` rows for the report."""

    title: ClassVar[str] = "Result"

    def plot(self):  # -> plotly.graph_objects.Figure
        raise NotImplementedError

    def figures(self) -> list:
        """Every figure the report shows for this result (default: the one from ``plot``)."""
        return [self.plot()]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` shown under the figures."""
        return [], []

    def summary(self) -> str:
        """A sentence or two in plain words: what the numbers say, including when they say little."""
        return ""

    def metrics(self) -> list[tuple[str, int | None, str | None, float]]:
        """Long-format numbers ``(metric, layer, site, value)`` for a results database (``workbench sweep``).

        Derived from :meth:`table` by default: the ``site`` or ``matrix`` column names the site (with ``.h<head>``
        appended when a ``head`` column holds a head rather than ``"-"``); the ``layer`` column gives the layer, else
        ``blocks.<n>.`` in the site, else None; every other column whose value is an int or float (not a bool; NaN
        and infinities included) is a metric named by its header.

        Rows that differ only by a label (a dataset, a patch kind, a method) would repeat a ``(metric, layer, site)``
        key; then, and only then, every other column whose values are all non-empty strings is appended to the site,
        joined by ``/`` in column order: ``blocks.3.hook_resid_post/v_row`` (subspace_patching), or the labels alone
        without a site column (token_maps: ``TAM raw``). A table whose keys are already unique keeps its plain
        sites. Rows that differ by a number which is a setting, not a measurement (a steering strength), still repeat
        keys: override this method there and put the setting into the site (:func:`setting`), as rankme, steer2edit
        and language_neurons do."""
        header, rows = self.table()
        if not header:
            return []
        names = {name: i for i, name in enumerate(header)}
        key_cols = {i for name in ("site", "matrix", "head", "layer") if (i := names.get(name)) is not None}
        keyed = [(*_site_and_layer(names, row), row) for row in rows]
        out = _table_metrics(header, key_cols, keyed)
        if len({m[:3] for m in out}) < len(out):
            labels = [i for i in range(len(header))
                      if i not in key_cols and all(isinstance(row[i], str) and row[i] for row in rows)]
            keyed = [("/".join(([] if site is None else [site]) + [row[i] for i in labels]) or None, layer, row)
                     for site, layer, row in keyed]
            out = _table_metrics(header, key_cols, keyed)
        return out

    def to_pandas(self, *, long: bool = False):  # -> pandas.DataFrame
        """The result as a pandas DataFrame: the :meth:`table` (columns = its header, one row per table row), or with
        ``long=True`` the long format of :meth:`metrics` (columns ``metric``, ``layer``, ``site``, ``value``).

        Example: ``run_analysis(lm, "weight_spectra").to_pandas(long=True).query("metric == 'alpha'")``"""
        import pandas as pd

        if long:
            frame = pd.DataFrame(self.metrics(), columns=["metric", "layer", "site", "value"])
            return frame.astype({"layer": "Int64"})  # integers, <NA> where a metric has no layer (not 0.0 / NaN)
        header, rows = self.table()
        return pd.DataFrame([list(row) for row in rows], columns=list(header))

    def _repr_html_(self) -> str:
        return f"<h3>{html.escape(self.title)}</h3><p>{html.escape(self.summary())}</p>" \
               f"{figures_html(self.figures())}{table_html(*self.table())}"


# Notebook HTML: plotly.js (~4.6 MB) is inlined once per Python session, by the first repr that shows a figure; the
# later ones call the global ``Plotly`` it defines (never a CDN: notebooks here are offline). This is what plotly's own
# ``init_notebook_mode(connected=False)`` does, without a separate call. The limit: the copy lives in that first
# output cell — clear or re-run that cell and the saved notebook's later figures stay blank when it is reopened (in the
# live session they still draw); ``reset_notebook_plotlyjs()`` makes the next repr inline it again. After a kernel
# restart the first repr inlines it again by itself.
_PLOTLYJS_SENT = False


def reset_notebook_plotlyjs() -> None:
    """Make the next notebook repr inline plotly.js again (after clearing the output that held it).

    Example: ``reset_notebook_plotlyjs(); result`` — this cell's output now carries plotly.js."""
    global _PLOTLYJS_SENT
    _PLOTLYJS_SENT = False


def figures_html(figures: list) -> str:
    """Figures as HTML ``<div>``s for a notebook repr, plotly.js inlined only if no repr of this session has yet.

    Example: ``IPython.display.HTML(figures_html(result.figures()))``"""
    global _PLOTLYJS_SENT
    out = []
    for fig in figures:
        out.append(fig.to_html(full_html=False, include_plotlyjs=not _PLOTLYJS_SENT))
        _PLOTLYJS_SENT = True
    return "".join(out)


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _site_and_layer(names: dict[str, int], row: list[Any]) -> tuple[str | None, int | None]:
    """The site (``site`` or ``matrix`` column, ``.h<head>`` added) and layer of one table row (see ``metrics``)."""
    column = names.get("site", names.get("matrix"))
    site = None if column is None else str(row[column])
    head = row[names["head"]] if "head" in names else "-"
    if site is not None and head not in ("-", None, -1):
        site = f"{site}.h{head}"
    layer = row[names["layer"]] if "layer" in names else None
    if not isinstance(layer, int) or isinstance(layer, bool):
        match = _BLOCK.search(site or "")
        layer = int(match.group(1)) if match else None
    return site, layer


def _table_metrics(header: list[str], key_cols: set[int], keyed: list[tuple[str | None, int | None, list[Any]]]
                   ) -> list[tuple[str, int | None, str | None, float]]:
    """Each row's numeric cells outside the key columns as ``(header, layer, site, float)`` (see ``metrics``)."""
    return [(header[i], layer, site, float(v)) for site, layer, row in keyed for i, v in enumerate(row)
            if i not in key_cols and isinstance(v, numbers.Real) and not isinstance(v, bool)]


def setting(name: str, value: float) -> str:
    """``name=value`` for a setting in a metrics site key (``λ=2``, ``ρ=0.05``, ``seed=1``): an int as written, a
    float by its shortest round-trip repr without a trailing ``.0``, so ``2`` and ``2.0`` name one setting and two
    different floats never share a name."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(float(value))
    return f"{name}={text.removesuffix('.0')}"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table (escaped)."""
    if not header:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="wb-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


__all__ = ["PALETTE", "Config", "ConfigError", "Result", "Serialisable", "figures_html", "fmt", "reset_notebook_plotlyjs",
           "setting", "table_html"]
