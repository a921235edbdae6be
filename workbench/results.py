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
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import ConfigError, FigureExportError, config_error
from workbench.validation import Constraint


class Serialisable:
    """``to_dict``/``from_dict``/``to_json``/``from_json`` for a frozen dataclass with JSON-valued fields.

    Example: ``type(result).from_json(result.to_json()) == result``"""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The object as JSON-ready data: its ``kind`` and every dataclass field.

        Example: ``type(result).from_dict(result.to_dict()) == result``"""
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Rebuild from :meth:`to_dict`'s data (``kind`` optional, but checked when present); a ConfigError names an
        unknown field.

        Example: ``RankMeConfig.from_dict({"eps": 1e-6})``"""
        call = f"{cls.__name__}.from_dict"
        if not isinstance(data, dict):
            raise config_error(call, "data", "a dict of field name → value", data)
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        if kind != cls.kind:
            raise config_error(call, "data['kind']", repr(cls.kind), kind)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=repr)
        if unknown:
            raise config_error(call, "data", f"only the keys {sorted(names)}", unknown)
        return cls(**data)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text.

        Example: ``Path("result.json").write_text(result.to_json())``"""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str):
        """Rebuild from :meth:`to_json`'s text.

        Example: ``type(result).from_json(Path("result.json").read_text())``"""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:  # not text, not JSON, or nested past the stack
            raise config_error(f"{cls.__name__}.from_json", "text", f"JSON text of a dict ({type(exc).__name__}: "
                               f"{str(exc)[:80]})", text) from None
        return cls.from_dict(data)


# Line colours shared by the analyses' plots (plotly's default sequence), so a dataset keeps its colour across figures.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

# Static export (save_figures): a 7-inch column at 100 layout px per inch; PNG at scale 3 = 300 dpi.
FIGURE_FORMATS = ("png", "svg", "pdf", "jpeg", "webp")
PAPER_WIDTH = 700
PAPER_HEIGHT = 450
PAPER_SCALE = 3.0



def table_figure(title: str, header: list[str], rows: list[list[Any]]) -> Any:
    """A plotly table (for lists a reader scans in the report: edited components, example generations).

    Example: ``table_figure("Edited components", ["layer", "λ"], [[5, 2.0], [6, -1.5]]).show()``"""
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
    goes in a ``validate`` override that calls ``super().validate()`` first and then ``self.check``.

    Example: ``WeightSpectraConfig(per_head=True).validate()  # a Config: fields checked on construction too``"""

    constraints: ClassVar[dict[str, Constraint]] = {}

    def validate(self) -> None:
        """Check every field against ``constraints`` (storing the converted values) and raise ConfigError naming the
        first bad one; runs on construction. A subclass with rules across fields overrides it, calls
        ``super().validate()`` and then :meth:`check`.

        Example: ``WeightSpectraConfig(esd_layer=5).validate()  # None; runs on construction too``"""
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
        """A rule the table cannot say (across fields): raise ConfigError naming ``name`` unless ``ok``.

        Example: ``self.check("max_seq_len", self.max_seq_len >= self.stride, f"an int >= stride ({self.stride})")``"""
        if not ok:
            raise config_error(type(self).__name__, name, allowed, getattr(self, name))


class Result(Serialisable):
    """Base of analysis results: ``plot()`` returns a plotly Figure, ``table()`` rows for the report.

    Example: ``result: Result = run_analysis(lm, "weight_spectra"); result.summary(), result.table()``"""

    title: ClassVar[str] = "Result"

    def plot(self):  # -> plotly.graph_objects.Figure
        """The result's main plotly Figure (each result class implements it).

        Example: ``run_analysis(lm, "weight_spectra").plot().show()``"""
        raise NotImplementedError

    def figures(self) -> list:
        """Every figure the report shows for this result (default: the one from ``plot``).

        Example: ``[fig.layout.title.text for fig in run_analysis(lm, "weight_spectra").figures()]``"""
        return [self.plot()]

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``(header, rows)`` shown under the figures.

        Example: ``header, rows = run_analysis(lm, "weight_spectra").table()``"""
        return [], []

    def summary(self) -> str:
        """A sentence or two in plain words: what the numbers say, including when they say little.

        Example: ``print(run_analysis(lm, "rankme").summary())``"""
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
        and language_neurons do.

        Example: ``[m for m in run_analysis(lm, "weight_spectra").metrics() if m[0] == "alpha"][:3]``"""
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

    def save_figures(self, folder: str | Path, formats: tuple[str, ...] | list[str] = ("png", "svg", "pdf"), *,
                     width: int = PAPER_WIDTH, height: int | None = None, scale: float = PAPER_SCALE) -> list[Path]:
        """Write every figure of :meth:`figures` as ``<folder>/<kind>_<i>.<fmt>`` (``i`` from 1) in each format, with
        a paper layout (:func:`paper_figure`). Returns the paths written, figure by figure.

        Size: ``width``/``height`` are layout pixels (default 700 wide — 7 in at 100 px per inch, so 11-px text
        prints at 8 pt —, and the figure's own height or 450); raster formats get ``width*scale`` × ``height*scale``
        pixels (scale 3: 2100 px, 300 dpi at 7 in). Formats: png, svg, pdf, jpeg, webp. Needs kaleido and a
        Chromium (Debian: ``apt-get install chromium``, found by itself; elsewhere ``BROWSER_PATH=/path/to/chrome``);
        one browser start for all the figures (``plotly.io.write_images``). Each file appears whole: the images are
        written into a temporary folder inside ``folder`` and moved into place only once all succeeded; on an error
        nothing is left behind (a ``folder`` it had to create is removed again).

        Example: ``result.save_figures("figures", ("png", "pdf"))``"""
        return save_figures(self.figures(), folder, self.kind, formats, width=width, height=height, scale=scale)

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


def check_figure_formats(formats: Any, call: str = "Result.save_figures", param: str = "formats") -> tuple[str, ...]:
    """``formats`` as a tuple of lower-case names, or ConfigError naming the unknown ones (before any work).

    Example: ``check_figure_formats("PNG")  # ("png",); an unknown format raises ConfigError``"""
    if isinstance(formats, str):
        formats = (formats,)
    wanted = tuple(str(f).strip().lower() for f in formats)
    unknown = [f for f in wanted if f not in FIGURE_FORMATS]
    if not wanted or unknown:
        raise config_error(call, param, f"one or more of {list(FIGURE_FORMATS)}", unknown or list(formats))
    return tuple(dict.fromkeys(wanted))


def paper_figure(fig: Any, width: int = PAPER_WIDTH, height: int | None = None) -> Any:
    """A copy of ``fig`` laid out for a paper: white template, 11-px text (13-px title), tight margins, fixed size.

    Example: ``paper_figure(result.plot(), width=700).write_image("figure.pdf")``"""
    import plotly.graph_objects as go

    out = go.Figure(fig)
    out.update_layout(template="plotly_white", width=width, height=height or fig.layout.height or PAPER_HEIGHT,
                      font={"family": "Arial, Helvetica, sans-serif", "size": 11, "color": "black"},
                      title_font_size=13, legend_font_size=10, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return out


def save_figures(figures: list, folder: str | Path, name: str | list[str], formats: Any = ("png", "svg", "pdf"), *,
                 width: int = PAPER_WIDTH, height: int | None = None, scale: float = PAPER_SCALE) -> list[Path]:
    """``figures`` as ``<folder>/<name>_<i>.<fmt>`` (or ``<name[i]>.<fmt>`` for a list of file stems, one per figure),
    all in one kaleido call; see :meth:`Result.save_figures`.

    Example: ``save_figures([fig], "out", "myplot", ("svg",))``"""
    import importlib.util

    wanted = check_figure_formats(formats)
    if not (isinstance(width, int) and width > 0) or (height is not None and not (isinstance(height, int) and height > 0)):
        raise config_error("Result.save_figures", "width/height", "positive ints", (width, height))
    if not (isinstance(scale, numbers.Real) and scale > 0):
        raise config_error("Result.save_figures", "scale", "a positive number", scale)
    if importlib.util.find_spec("kaleido") is None:
        raise FigureExportError("saving figures needs the kaleido package: pip install kaleido==1.5.0")
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".figures.tmp-", dir=folder))
    stems = [f"{name}_{i}" for i in range(1, len(figures) + 1)] if isinstance(name, str) else list(name)
    if len(stems) != len(figures) or len(set(stems)) != len(stems):
        raise config_error("save_figures", "name", "a str or one distinct file stem per figure", name)
    names = [f"{stem}.{fmt}" for stem in stems for fmt in wanted]
    try:
        if figures:
            import plotly.io as pio

            laid = [paper_figure(fig, width, height) for fig in figures for _ in wanted]
            try:
                pio.write_images(laid, [tmp / n for n in names], format=[n.rsplit(".", 1)[1] for n in names],
                                 width=[f.layout.width for f in laid], height=[f.layout.height for f in laid],
                                 scale=scale)
            except RuntimeError as exc:
                if "Chrome" not in str(exc) and "Chromium" not in str(exc):
                    raise
                raise FigureExportError(
                    "saving figures needs Chromium for kaleido and none was found: apt-get install chromium (Debian/"
                    "Ubuntu), or set BROWSER_PATH to a Chrome/Chromium executable") from None
        mode = _umask_file_mode()
        for n in names:
            os.chmod(tmp / n, mode)
            os.replace(tmp / n, folder / n)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return [folder / n for n in names]


def _umask_file_mode() -> int:
    from workbench.atomic import umask_mode

    return umask_mode(0o666)


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
    different floats never share a name.

    Example: ``setting("λ", 2.0)  # "λ=2"``"""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(float(value))
    return f"{name}={text.removesuffix('.0')}"


def fmt(value: Any) -> str:
    """A value for a table cell: a float to 4 significant digits (NaN/inf as written), anything else as ``str``.

    Example: ``fmt(0.123456), fmt(float("nan")), fmt(3)  # ("0.1235", "nan", "3")``"""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def table_html(header: list[str], rows: list[list[Any]]) -> str:
    """A plain HTML table (escaped).

    Example: ``IPython.display.HTML(table_html(*result.table()))``"""
    if not header:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="wb-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


__all__ = ["FIGURE_FORMATS", "PALETTE", "Config", "ConfigError", "Result", "Serialisable", "figures_html", "fmt",
           "paper_figure", "reset_notebook_plotlyjs", "save_figures", "setting", "table_html"]
