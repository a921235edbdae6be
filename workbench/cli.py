"""The batch CLI: ``workbench report`` — config → load → capture → analyses → report (HTML + JSON) —,
``workbench sweep`` (many models × analyses × prompt sets × configs on Ray, see :mod:`workbench.sweeps`),
``workbench analyses`` (the registry as a table or JSON), ``workbench app`` (the dashboard; ``dashboard`` is its
alias) and ``workbench --version``.

Exit codes: 0 ok; 2 bad input (one ``error: ...`` line naming the parameter or file; typer's own usage errors too);
1 unexpected (one ``error: unexpected ...`` line; ``WORKBENCH_DEBUG=1`` shows the traceback), and ``sweep`` when a
cell failed.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # torch and the model stack load only when a command runs
    from workbench.models.loaded import LoadedModel

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Interpretability and spectral analysis of transformer language models.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("spectral-workbench")
        except PackageNotFoundError:
            number = "unknown"
        typer.echo(f"workbench {number}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print 'workbench <version>' and exit")] = False,
) -> None:
    """workbench: spectral reports on a model (bundled SmolLM2-135M-Instruct by default)."""


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _say(message: str) -> None:
    typer.echo(message, err=True)


DEFAULT_MODEL = "smollm2-135m"
DEFAULT_OUT = Path("reports/latest")


@app.command()
def report(
    model: Annotated[str | None, typer.Option(help="bundled name or local HF folder (default: smollm2-135m, or "
                                                      "the analyses' own default, e.g. gemma3-270m for "
                                                      "language_neurons)")] = None,
    prompts: Annotated[Path | None, typer.Option(help=".txt (one prompt a line) or .jsonl with \"text\"; "
                                                         "default: the 232 bundled passages")] = None,
    sites: Annotated[list[str] | None, typer.Option(help="hook names or globs, comma-separated or repeated "
                                                            "(default: resid_post, attn_out, mlp_out of every layer)")] = None,
    analyses_: Annotated[list[str] | None, typer.Option("--analyses", help="comma-separated analysis names "
                                                                                "(default: the spectral ones)")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="cap on the total tokens fed to the model")] = None,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N, ...")] = "cpu",
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="load a model folder whose only weights are "
                                                                       "pickle *.bin files (unpickling can run code: "
                                                                       "only for folders you trust)")] = False,
    config: Annotated[Path | None, typer.Option(help="JSON or TOML (.toml) file: {analysis name: {config field: "
                                                         "value}} (e.g. RankMe prompt sets, gradient datasets)")] = None,
    seed: Annotated[int, typer.Option(help="seed for anything random")] = 0,
    out: Annotated[Path | None, typer.Option(help="output folder (report.html, report.json; default "
                                                   "reports/latest, none with --json - unless given)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
    json_to: Annotated[str | None, typer.Option("--json", help="'-': print report.json on stdout (messages stay "
                                                                "on stderr); writes no folder unless --out is given")] = None,
    figures: Annotated[str | None, typer.Option(help="also save every result's figures into OUT/figures/ in these "
                                                      "formats, comma-separated: png, svg, pdf, jpeg, webp (needs "
                                                      "Chromium: apt-get install chromium, or BROWSER_PATH)")] = None,
) -> None:
    """Write a spectral report (self-contained HTML + JSON) on a model.
    \f  (the CLI help stops here; the example is for Python callers)
    Example: ``report(model="smollm2-135m", out=Path("reports/smollm2"), figures="png,svg")  # CLI: workbench report``"""
    import torch

    from workbench import registry
    from workbench.devices import check_device
    from workbench.errors import WorkbenchError
    from workbench.models import load_model
    from workbench.prompts import default_prompts, read_prompts
    from workbench.report import Report, package_versions
    from workbench.runner import resolve_configs, run_analyses

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        if json_to not in (None, "-"):
            raise WorkbenchError(f"--json takes only '-' (stdout), not {json_to!r}; use --out DIR for a file")
        formats = _figure_formats(figures, out)
        check_device("report", "--device", device)  # before any work: no raw AssertionError from torch later
        if out is None and json_to is None:
            out = DEFAULT_OUT
        if out is not None and out.exists() and not overwrite:
            raise WorkbenchError(f"--out {out} exists; pass --overwrite to replace it")
        torch.manual_seed(seed)
        names = _split(analyses_) or registry.names(default_only=True)
        overrides = _read_config(config, names)
        configs = resolve_configs({n: _config_for(n, _split(sites), overrides.get(n, {}), config)
                                   for n in names})
        texts = read_prompts(prompts) if prompts else default_prompts()
        model = model or registry.default_model(list(configs), DEFAULT_MODEL)
        _say(f"loading {model} on {device} ...")
        loading = time.perf_counter()
        lm = load_model(model, device=device, allow_pickle=allow_pickle)
        seconds = {"load": time.perf_counter() - loading}
        _say(f"{lm!r}; {len(texts)} prompts; analyses: {', '.join(configs)}")
        results = run_analyses(lm, configs, texts=texts, batch_size=batch_size, max_tokens=max_tokens,
                               progress=True, timings=seconds)
        provenance = _provenance(lm, results, prompts, names, batch_size, max_tokens, device, seed, started) | {
            "config": overrides, "seconds": {step: round(s, 1) for step, s in seconds.items()}}
        made = Report(results=results, provenance=provenance | {"versions": package_versions()})
        path = made.write(out, overwrite=overwrite) if out is not None else None
        saved = _save_report_figures(results, path / "figures", formats) if formats else []
    except WorkbenchError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(code=2) from None
    for result in results.values():
        _say(f"- {result.title}: {result.summary()}")
    _say("seconds: " + ", ".join(f"{step} {s:.1f}" for step, s in seconds.items()))
    if json_to == "-":
        import json

        typer.echo(json.dumps(made.to_dict(), indent=1))
    where = f"wrote {path / 'report.html'} and {path / 'report.json'}" if path else "report.json on stdout"
    if saved:
        where += f", {len(saved)} figure files in {path / 'figures'}"
    _say(f"{where} in {time.perf_counter() - started:.0f} s")


def _figure_formats(figures: str | None, out: Path | None) -> tuple[str, ...]:
    """``--figures png,svg`` as formats, checked before any work (ConfigError naming the unknown ones)."""
    from workbench.errors import ConfigError
    from workbench.results import check_figure_formats

    if figures is None:
        return ()
    if out is None:
        raise ConfigError("--figures needs an output folder: pass --out DIR with --json -")
    try:
        return check_figure_formats(_split([figures]) or [], call="workbench report", param="--figures")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("workbench report()", "workbench report")) from None


def _save_report_figures(results: dict, folder: Path, formats: tuple[str, ...]) -> list[Path]:
    """Every result's figures into ``folder`` as ``<analysis name>_<i>.<fmt>`` (the name a built-in result's kind
    also has; names are unique, kinds of plug-ins need not be), one browser start for all of them."""
    from workbench.results import save_figures

    figures, names = [], []
    for name, result in results.items():
        for i, fig in enumerate(result.figures(), 1):
            figures.append(fig)
            names.append(f"{name}_{i}")
    return save_figures(figures, folder, names, formats)


def _config_for(name: str, sites: list[str] | None, fields: dict, config: Path | None = None):
    """``name``'s config from ``--sites`` and the ``--config`` file's fields; a field the config refuses is reported
    with the file it came from, as the file's other errors are."""
    from workbench import registry
    from workbench.errors import ConfigError

    spec = registry.get(name)
    from_file = bool(fields)
    if sites and "sites" in spec.config.__dataclass_fields__:
        fields = {"sites": sites} | fields
    try:
        return spec.config.from_dict(fields) if fields else None
    except ConfigError as exc:
        if not from_file:
            raise
        raise ConfigError(f"--config {config}: [{name}]: {exc}") from None


def _read_config(path: Path | None, names: list[str]) -> dict[str, dict]:
    """``--config`` JSON, or TOML by the ``.toml`` suffix (same structure: a table per analysis) → {analysis:
    fields}; every error names the file and the offending key."""
    import json
    import tomllib

    from workbench.errors import ConfigError

    if path is None:
        return {}
    toml = path.suffix.lower() == ".toml"
    kind = "TOML document" if toml else "JSON object"
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if toml else json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read a {kind} ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"--config {path}: must be a {kind} of analysis name → "
                          f"{'table' if toml else 'object'} of config fields")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"--config {path}: configures {unknown}, which are not among the analyses run ({names})")
    return data


def _provenance(lm: LoadedModel, results, prompts, names, batch_size, max_tokens, device, seed, started) -> dict:
    act = next((r for r in results.values() if hasattr(r, "n_tokens")), None)
    from workbench.models.bundled import get_bundled

    source = get_bundled(lm.name)
    notice = {"model_licence": f"{source.license}. {source.notice}".strip()} if source is not None else {}
    return notice | {
        "model": lm.name, "model_facts": lm.facts.to_dict(), "analyses": names,
        "prompts": str(prompts) if prompts else "bundled default_prompts.jsonl",
        "sites": list(getattr(act, "site", [])), "n_texts": getattr(act, "n_texts", 0),
        "n_tokens": getattr(act, "n_tokens", 0), "batch_size": batch_size, "max_tokens": max_tokens,
        "device": device, "seed": seed, "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "duration_s": round(time.perf_counter() - started, 1),
    }


APP_HOST_ENV = "WORKBENCH_APP_HOST"  # the address `workbench app` bound the server to (read by the dashboard)
APP_ROOTS_ENV = "WORKBENCH_APP_ROOTS"  # os.pathsep-separated folders that typed paths must lie in (`--allow-root`)
APP_MAX_UPLOAD_MB = 32  # the server's own upload limit; the dashboard bounds report uploads at the same size


def dashboard_command(model: str, host: str, port: int, max_upload_mb: int = APP_MAX_UPLOAD_MB) -> list[str]:
    """The ``streamlit run`` command for the installed dashboard (``workbench_app``, the source folder ``app/``);
    ``max_upload_mb`` is the server's own upload limit (the pages bound each upload again, lower for prompts).

    Example: ``subprocess.run(dashboard_command("smollm2-135m", "127.0.0.1", 8501))``"""
    import importlib.util

    spec = importlib.util.find_spec("workbench_app")
    if spec is None or not spec.origin:
        raise typer.BadParameter("the dashboard package workbench_app is not installed (pip install spectral-workbench)")
    home = Path(spec.origin).parent / "Home.py"
    return [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", host, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.maxUploadSize", str(max_upload_mb)]


def is_loopback(host: str | None) -> bool:
    """Whether a bind address reaches this machine only (``localhost``, ``127.x.x.x``, ``::1``); an empty address
    is not (Streamlit then listens on every interface).

    Example: ``is_loopback("127.0.0.1"), is_loopback("0.0.0.0")  # (True, False)``"""
    import ipaddress

    if not host:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def dashboard(
    model: Annotated[str, typer.Option(help="bundled name or local HF folder shown first")] = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="address to bind (0.0.0.0 shares it on the network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8501,
    allow_root: Annotated[list[Path] | None, typer.Option(
        "--allow-root", help="a folder that typed paths (model, SAE, reports, sweeps) may lie in; repeatable; "
                             "replaces the default (the working directory and the workbench cache)")] = None,
) -> None:
    """Open the Streamlit dashboard (http://HOST:PORT) on a model.
    \f  (the CLI help stops here; the example is for Python callers)
    Example: ``dashboard(model="smollm2-135m", port=8502)  # = workbench app --port 8502``"""
    import os
    import subprocess

    command = dashboard_command(model, host, port)
    env = os.environ | {"WORKBENCH_APP_MODEL": model, APP_HOST_ENV: host}
    if allow_root:
        env[APP_ROOTS_ENV] = os.pathsep.join(str(Path(r).expanduser().resolve()) for r in allow_root)
    if not is_loopback(host):
        roots = env.get(APP_ROOTS_ENV, "").split(os.pathsep) if env.get(APP_ROOTS_ENV) else [
            str(Path.cwd()), "the workbench cache"]
        _say(f"warning: the dashboard listens on {host}, not only on this machine: anyone who can reach port {port} "
             f"can use it (folders limited to {', '.join(roots)}; edits stay in each browser tab)")
    _say(f"dashboard on http://{host}:{port} (Ctrl-C stops it)")
    raise typer.Exit(subprocess.run(command, env=env).returncode)


app.command("app")(dashboard)
app.command("dashboard", help="Alias of `workbench app`: open the Streamlit dashboard (http://HOST:PORT).")(dashboard)


@app.command()
def analyses(
    as_json: Annotated[bool, typer.Option("--json", help="print the same as JSON on stdout")] = False,
) -> None:
    """List the registered analyses: name, description, whether in the default report, config fields' defaults.
    \f  (the CLI help stops here; the example is for Python callers)
    Example: ``analyses(as_json=True)  # = workbench analyses --json``"""
    import json

    rows = analyses_table()
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        default = "default report" if row["in_default_report"] else "by name only"
        typer.echo(f"{row['name']}  ({default})\n  {row['description']}")
        for field, value in row["config"].items():
            typer.echo(f"    {field} = {json.dumps(value)}")


def analyses_table() -> list[dict]:
    """Every registered analysis as ``{name, description, in_default_report, config: {field: default}}`` (a field
    without a default shows ``null``; a non-JSON default its ``repr``).

    Example: ``[row["name"] for row in analyses_table() if row["in_default_report"]]``"""
    import dataclasses
    import json

    from workbench import registry

    def default(field: dataclasses.Field):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            return None
        try:
            json.dumps(value)
        except TypeError:
            return repr(value)
        return value

    rows = []
    for name in registry.names():
        spec = registry.get(name)
        rows.append({"name": name, "description": spec.description.splitlines()[0] if spec.description else "",
                     "in_default_report": spec.in_default_report,
                     "config": {f.name: default(f) for f in dataclasses.fields(spec.config)}})
    return rows


@app.command()
def sweep(
    spec: Annotated[Path | None, typer.Argument(help="the sweep spec (.toml or .json): models, analyses, prompts, "
                                                     "a config grid per analysis")] = None,
    out: Annotated[Path | None, typer.Option(help="the sweep folder (cells/, results.duckdb, sweep.log, "
                                                    "report.html); re-running resumes it")] = None,
    address: Annotated[str | None, typer.Option(help="join a Ray cluster: 'auto' or 'ray://host:port' (default: a "
                                                       "local Ray on this machine's CPUs)")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="number of workers (default: the cluster's CPUs, or GPUs "
                                                          "with a cuda device)")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, ... (cuda asks for one GPU per worker)")] = "cpu",
    reindex: Annotated[Path | None, typer.Option("--reindex", help="rebuild DIR/results.duckdb from DIR/cells/ "
                                                                    "and exit")] = None,
) -> None:
    """Run a sweep of analyses over models, checkpoints, prompt sets and configs on Ray (resumable).
    \f  (the CLI help stops here; the example is for Python callers)
    Example: ``sweep(Path("sweep.toml"), out=Path("sweeps/ckpts"), max_parallel=1)  # CLI: workbench sweep``"""
    from workbench.errors import WorkbenchError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if reindex is not None:
            _reindex(reindex, spec, out)
            return
        if spec is None or out is None:
            raise WorkbenchError("workbench sweep needs SPEC and --out DIR (or --reindex DIR alone)")
        from workbench.sweeps import load_spec, run_sweep

        parsed = load_spec(spec)
        _say(f"{len(parsed.cells)} cells ({len(parsed.models())} models x {', '.join(parsed.analyses)}) -> {out}")
        summary = run_sweep(parsed, out, address=address, max_parallel=max_parallel, device=device)
    except WorkbenchError as exc:
        _say(f"error: {exc}")
        raise typer.Exit(code=2) from None
    report = f"report {summary.report}; " if summary.report else "no report (see the log); "
    _say(f"{report}database {out / 'results.duckdb'}; log {out / 'sweep.log'}")
    typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(code=1)


def _reindex(folder: Path, spec: Path | None, out: Path | None) -> None:
    from workbench.errors import WorkbenchError
    from workbench.sweeps import reindex

    if spec is not None or out is not None:
        raise WorkbenchError("--reindex DIR takes no SPEC and no --out")
    if not (folder / "cells").is_dir():
        raise WorkbenchError(f"--reindex {folder}: not a sweep folder (no {folder / 'cells'} folder)")
    count = reindex(folder)
    _say(f"reindexed {count} cells into {folder / 'results.duckdb'}")


def main() -> None:
    """The ``workbench`` entry point: an unexpected exception exits 1 with one ``error: unexpected ...`` line on
    stderr (``WORKBENCH_DEBUG=1`` re-raises it, with Python's traceback).

    Example: ``main()  # what the installed ``workbench`` script runs, e.g. with sys.argv = ["workbench", "analyses"]``"""
    import os

    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the last resort: bad input already exited 2 inside the commands
        if os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        _say(f"error: unexpected {type(exc).__name__}: {first} (set WORKBENCH_DEBUG=1 for the traceback)")
        sys.exit(1)
