"""``Report``: analysis results + provenance, written as ``report.json`` and a self-contained ``report.html``.

The HTML inlines plotly.js once (no CDN: it must open offline) and renders each result with its own figures, summary
and table (rendering is a function of the Result). Both files are written into a temporary sibling folder that is
renamed into place, so an interrupted run never leaves a half-written report.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from workbench import registry
from workbench.atomic import replace_folder
from workbench.errors import ConfigError
from workbench.results import Result, figures_html, table_html

PACKAGES = ("workbench", "torch", "transformers", "transformer-lens", "sae-lens", "numpy", "scipy", "plotly")
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{margin-bottom:.2em}.wb-table{border-collapse:collapse;font-size:12px;margin:1em 0}
.wb-table td,.wb-table th{border:1px solid #ddd;padding:2px 6px;text-align:right}
.wb-table th{background:#f4f4f4}details{margin:1em 0}.summary{background:#f7f9fc;padding:.6em 1em;border-left:4px
solid #4a7bd0}"""


def package_versions() -> dict[str, str]:
    """Versions of the packages a report's numbers depend on (``"not installed"`` for a missing one), for its
    provenance.

    Example: ``package_versions()["torch"]``"""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class Report:
    """Results by analysis name, plus provenance (model, sites, token count, versions, seed, duration, ...).

    Example: ``Report(run_analyses(lm, ["activation_spectra", "weight_spectra"], texts=texts)).write("reports/nb")``"""

    results: dict[str, Result]
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data: its provenance and every result's ``to_dict``.

        Example: ``Report.from_dict(report.to_dict()).results.keys()``"""
        return {"provenance": self.provenance, "results": {k: r.to_dict() for k, r in self.results.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Rebuild a report from :meth:`to_dict`'s data (each result by its ``kind`` through the registry).

        Example: ``Report.from_dict(json.loads(Path("reports/nb/report.json").read_text()))``"""
        results = {k: registry.result_from_dict(v) for k, v in data["results"].items()}
        return cls(results=results, provenance=data.get("provenance", {}))

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a ``report.json`` (or the folder holding one).

        Example: ``Report.load("reports/nb").results["weight_spectra"].summary()``"""
        path = Path(path)
        return cls.from_dict(json.loads((path / "report.json" if path.is_dir() else path).read_text()))

    def to_html(self) -> str:
        """The report as one self-contained HTML page: provenance table, then each result's title, summary, figures and
        table (plotly.js inlined once, so it opens offline).

        Example: ``Path("page.html").write_text(Report.load("reports/nb").to_html())``"""
        from plotly.offline import get_plotlyjs

        sections = [self._section(name, result) for name, result in self.results.items()]
        prov = table_html(["field", "value"], [[k, _flat(v)] for k, v in self.provenance.items()])
        title = f"workbench report: {html.escape(str(self.provenance.get('model', '')))}"
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style>"
                f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><h1>{title}</h1>"
                f"{''.join(sections)}<h2>Provenance</h2>{prov}</body></html>")

    def _repr_html_(self) -> str:
        """The report in a notebook: each result's section and the provenance, plotly.js inlined at most once per
        session (see ``workbench.results.figures_html``) instead of once per report as in ``report.html``."""
        sections = "".join(self._section(name, result, notebook=True) for name, result in self.results.items())
        prov = table_html(["field", "value"], [[k, _flat(v)] for k, v in self.provenance.items()])
        return f"{sections}<details><summary>Provenance</summary>{prov}</details>"

    def _fill(self, folder: Path) -> None:
        (folder / "report.json").write_text(json.dumps(self.to_dict(), indent=1))
        (folder / "report.html").write_text(self.to_html(), encoding="utf-8")

    @staticmethod
    def _section(name: str, result: Result, *, notebook: bool = False) -> str:
        figs = figures_html(result.figures()) if notebook else "".join(
            f.to_html(full_html=False, include_plotlyjs=False) for f in result.figures())
        return (f"<section id='{html.escape(name)}'><h2>{html.escape(result.title)}</h2>"
                f"<p class='summary'>{html.escape(result.summary())}</p>{figs}"
                f"<details><summary>Table ({html.escape(name)})</summary>{table_html(*result.table())}</details>"
                f"</section>")

    def write(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``out/report.json`` and ``out/report.html`` atomically; refuse an existing ``out`` unless told.

        Example: ``Report({"rankme": run_analysis(lm, "rankme")}).write("reports/rankme", overwrite=True)``"""
        out = Path(out)
        exists = ConfigError(f"Report.write(): parameter 'out' must not exist (or pass overwrite=True / "
                             f"--overwrite); received {str(out)!r}, which exists")
        if out.exists() and not overwrite:
            raise exists
        if out.exists() and not out.is_dir():
            raise ConfigError(f"Report.write(): parameter 'out' must be a folder; received {str(out)!r}, a file")
        try:
            replace_folder(out, self._fill, overwrite=overwrite)
        except ConfigError:
            if overwrite or not out.exists():
                raise  # not the race below: a ConfigError of the report's own making, passed on as it is
            raise exists from None  # another process wrote it since the check above (checked again under the lock)
        return out


def _flat(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else (
        json.dumps(value) if isinstance(value, dict) else str(value))
