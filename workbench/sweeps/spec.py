"""A sweep spec (TOML, or JSON of the same shape) → :class:`SweepSpec`: every (model, analysis, prompts, config) cell.

The spec is checked whole before any work starts: an unknown analysis, a missing folder, a glob that matches nothing,
an unknown prompt set or a missing prompt file, an unknown or invalid config field, an empty list or an unknown key is
refused with a :class:`SpecError` naming the key, what it allows and what it received. A cell's id hashes its
definition (model, analysis, prompts and the prompt file's bytes, config, batch size, token cap, seed) but not its
label or step, so relabelling a model never reruns it.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError

__all__ = ["NO_PROMPTS", "Cell", "SpecError", "SweepSpec", "load_spec", "parse_spec", "prompt_texts", "reads_prompts"]

NO_PROMPTS = "-"  # the prompts value of a cell whose analysis reads no prompts (weight_spectra)
TOP_KEYS = ("analyses", "prompts", "batch_size", "max_tokens", "seed", "models", "grid")
SOURCE_KEYS = ("source", "label", "step")
GLOB_KEYS = ("glob",)
DEFAULT_PROMPTS = ("bundled:all",)


class SpecError(ConfigError):
    """A sweep spec is malformed; the message names the spec file and the offending key.

    Example: ``pytest.raises(SpecError, load_spec, "bad.toml")  # its message names the file and the key``"""


@dataclass(frozen=True)
class Cell:
    """One unit of work: an analysis with one config on one model and one prompt set.

    ``model`` is a bundled name or an absolute folder path; ``prompts`` is ``"bundled:<name>"``, an absolute file path
    or ``"-"`` (the analysis reads no prompts); ``config`` holds the grid point's fields only (``{}``: the defaults);
    ``prompts_sha`` is the sha256 of a prompt file's bytes (``""`` otherwise), read once when the spec is parsed.

    Example: ``cell: Cell = load_spec("sweep.toml").cells[0]; cell.id, cell.to_dict()``"""

    model: str
    label: str
    step: int | None
    analysis: str
    prompts: str
    config: dict = field(default_factory=dict)
    batch_size: int = 8
    max_tokens: int | None = None
    seed: int = 0
    prompts_sha: str = ""

    @property
    def id(self) -> str:
        """sha256 (first 16 hex digits) of the canonical JSON of the definition; label and step are not part of it."""
        key = {"model": self.model, "analysis": self.analysis, "prompts": self.prompts,
               "prompts_sha": self.prompts_sha, "config": self.config, "batch_size": self.batch_size,
               "max_tokens": self.max_tokens, "seed": self.seed}
        text = json.dumps(key, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __hash__(self) -> int:  # the config dict is not hashable; the id stands for the definition
        return hash(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The cell as a plain dict (what ``cell.json`` and the Ray workers receive).

        Example: ``Cell.from_dict(cell.to_dict()) == cell``"""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        """A cell from :meth:`to_dict`'s dict; keys that are not fields (e.g. a record's status) are ignored.

        Example: ``Cell.from_dict(json.loads(Path("cell.json").read_text()))``"""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec: its cells in order (model by model), and the file it came from (None for a dict).

    Example: ``spec: SweepSpec = load_spec("sweep.toml"); len(spec.cells), spec.models()``"""

    path: Path | None
    cells: tuple[Cell, ...]
    analyses: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()

    def models(self) -> list[str]:
        """The distinct models, in order.

        Example: ``load_spec("sweep.toml").models()  # ["smollm2-135m"]``"""
        return list(dict.fromkeys(c.model for c in self.cells))


def load_spec(path: str | Path) -> SweepSpec:
    """Read a ``.toml`` (or ``.json``) spec; relative paths in it are relative to the file's folder.

    Example: ``run_sweep(load_spec("sweep.toml"), "sweeps/readme")``"""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise SpecError(f"sweep spec {path}: not valid {kind} ({exc})") from None
    if not isinstance(data, dict):
        raise SpecError(f"sweep spec {path}: must be an object of keys {list(TOP_KEYS)}; received {type(data).__name__}")
    try:
        spec = parse_spec(data, path.resolve().parent)
    except SpecError as exc:
        raise SpecError(f"sweep spec {path}: {exc}") from None
    return SweepSpec(path=path.resolve(), cells=spec.cells, analyses=spec.analyses, prompts=spec.prompts)


def parse_spec(data: dict[str, Any], base: Path) -> SweepSpec:
    """Check a spec's keys and expand its cells: models × analyses × prompts × that analysis' grid (product).

    Example: ``parse_spec({"analyses": ["weight_spectra"], "models": [{"source": "smollm2-135m"}]}, Path("."))``"""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise SpecError(f"unknown key(s) {unknown}; a spec has only {list(TOP_KEYS)}")
    analyses = _analyses(data.get("analyses"))
    needs_prompts = [a for a in analyses if reads_prompts(a)]
    prompts = _prompts(data.get("prompts", list(DEFAULT_PROMPTS)), base) if needs_prompts else []
    settings = {"batch_size": _int(data, "batch_size", 8, low=1), "max_tokens": _int(data, "max_tokens", None, low=1),
                "seed": _int(data, "seed", 0, low=0)}
    grids = _grids(data.get("grid", {}), analyses)
    models = _models(data.get("models"), base)
    cells = []
    for model, label, step in models:
        for name in analyses:
            for text_set, sha in (prompts if name in needs_prompts else [(NO_PROMPTS, "")]):
                cells += [Cell(model=model, label=label, step=step, analysis=name, prompts=text_set, config=point,
                               prompts_sha=sha, **settings) for point in grids[name]]
    seen: dict[str, Cell] = {}
    for cell in cells:
        if cell.id in seen:
            raise SpecError(f"two cells have the same definition (a grid value listed twice?): {cell.analysis} on "
                            f"{cell.label} with prompts {cell.prompts} and config {cell.config}")
        seen[cell.id] = cell
    return SweepSpec(path=None, cells=tuple(cells), analyses=tuple(analyses), prompts=tuple(p for p, _ in prompts))


def reads_prompts(analysis: str) -> bool:
    """Whether a registered analysis reads prompts (it declares ``sites`` or ``per_prompt_sites``).

    Example: ``reads_prompts("activation_spectra"), reads_prompts("weight_spectra")  # (True, False)``"""
    from workbench import registry

    spec = registry.get(analysis)
    return spec.sites is not None or spec.per_prompt_sites is not None


def prompt_texts(prompts: str) -> list[str] | None:
    """The texts of a cell's prompt set: ``bundled:all`` (the 232 passages), ``bundled:<category>``, a .txt/.jsonl
    path, or ``"-"`` → None.

    Example: ``len(prompt_texts("bundled:all"))  # 232``"""
    from workbench.prompts import default_prompts, read_prompts

    if prompts == NO_PROMPTS:
        return None
    if prompts.startswith("bundled:"):
        name = prompts.removeprefix("bundled:")
        return default_prompts(None if name == "all" else name)
    return read_prompts(prompts)


# --- checks, one per key ---------------------------------------------------------------------------------------------

def _list(value: Any, key: str, what: str) -> list:
    if value is None:
        raise SpecError(f"{key!r} is missing; it must be a non-empty list of {what}")
    if not isinstance(value, list) or not value:
        raise SpecError(f"{key!r} must be a non-empty list of {what}; received {value!r}")
    return value


def _int(data: dict, key: str, default: int | None, *, low: int) -> int | None:
    value = data.get(key, default)
    if value is default:
        return value
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SpecError(f"{key!r} must be an int >= {low}; received {value!r}")
    return value


def _analyses(value: Any) -> list[str]:
    from workbench import registry

    names = _list(value, "analyses", "registered analysis names")
    known = registry.names()
    for i, name in enumerate(names):
        if name not in known:
            raise SpecError(f"'analyses[{i}]' must be one of {known}; received {name!r}")
    if len(set(names)) != len(names):
        raise SpecError(f"'analyses' must not repeat a name; received {names}")
    return names


def _prompts(value: Any, base: Path) -> list[tuple[str, str]]:
    """Each prompt set as (``bundled:<name>`` or absolute path, sha256 of the file's bytes or "")."""
    from workbench.prompts import categories, read_prompts

    out = []
    for i, item in enumerate(_list(value, "prompts", "bundled:<category> names or .txt/.jsonl paths")):
        key = f"prompts[{i}]"
        if not isinstance(item, str) or not item:
            raise SpecError(f"{key!r} must be a bundled:<category> name or a file path; received {item!r}")
        if item.startswith("bundled:"):
            allowed = ["all", *categories()]
            if item.removeprefix("bundled:") not in allowed:
                raise SpecError(f"{key!r} must be one of {['bundled:' + c for c in allowed]} or a file path; "
                                f"received {item!r}")
            out.append((item, ""))
            continue
        path = (base / item).resolve()
        try:
            read_prompts(path)  # the whole file is checked now, not when its first cell runs
        except ConfigError as exc:
            raise SpecError(f"{key!r} = {item!r} (resolved to {path}): {exc}") from None
        out.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
    if len({p for p, _ in out}) != len(out):
        raise SpecError(f"'prompts' must not repeat a prompt set; received {value}")
    return out


def _grids(value: Any, analyses: list[str]) -> dict[str, list[dict]]:
    """Per analysis, its grid points (the product of each field's alternatives), each checked by building its
    config."""
    if not isinstance(value, dict):
        raise SpecError(f"'grid' must be a table of analysis name → table of config fields; received {value!r}")
    stray = sorted(set(value) - set(analyses))
    if stray:
        raise SpecError(f"'grid' configures {stray}, which are not in 'analyses' ({analyses})")
    return {name: _grid_points(name, value.get(name, {})) for name in analyses}


def _grid_points(name: str, table: Any) -> list[dict]:
    from workbench import registry

    key = f"grid.{name}"
    if not isinstance(table, dict):
        raise SpecError(f"{key!r} must be a table of config fields; received {table!r}")
    alternatives = {}
    for field_name, values in table.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise SpecError(f"'{key}.{field_name}' is an empty list (an empty grid); give at least one value (a field "
                            "whose value is itself a list is written as a list of lists)")
        alternatives[field_name] = values
    points = [dict(zip(alternatives, combo)) for combo in itertools.product(*alternatives.values())]
    config = registry.get(name).config
    for point in points:
        try:
            config.from_dict(point)
        except (ConfigError, TypeError, ValueError) as exc:
            flat = [f for f, v in table.items() if isinstance(v, list) and not any(isinstance(x, list) for x in v)]
            hint = (f" (a list in a grid gives the alternatives: write a list-valued field as a list of lists, "
                    f"e.g. {flat[0]} = [{table[flat[0]]!r}])" if flat else "")
            raise SpecError(f"{key!r} = {point}: {exc}{hint}") from None
    return points


def _models(value: Any, base: Path) -> list[tuple[str, str, int | None]]:
    """Each model as (bundled name or absolute folder, label, step); a glob expands to its folders sorted by step."""
    out = []
    for i, entry in enumerate(_list(value, "models", "tables with 'source' or 'glob'")):
        key = f"models[{i}]"
        if not isinstance(entry, dict) or ("source" in entry) == ("glob" in entry):
            raise SpecError(f"{key!r} must be a table with exactly one of 'source' or 'glob'; received {entry!r}")
        allowed = GLOB_KEYS if "glob" in entry else SOURCE_KEYS
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise SpecError(f"{key!r} has unknown key(s) {unknown}; allowed: {list(allowed)} (a glob's label is "
                            "each folder's name and its step the last integer in that name)")
        out += _glob(entry["glob"], base, key) if "glob" in entry else [_source(entry, base, key)]
    if len({m for m, _, _ in out}) != len(out):
        raise SpecError(f"'models' names a model twice: {[m for m, _, _ in out]}")
    return out


def _source(entry: dict, base: Path, key: str) -> tuple[str, str, int | None]:
    from workbench.models import bundled_names

    source, label, step = entry["source"], entry.get("label"), entry.get("step")
    if not isinstance(source, str) or not source:
        raise SpecError(f"'{key}.source' must be a bundled name or a folder path; received {source!r}")
    if label is not None and (not isinstance(label, str) or not label):
        raise SpecError(f"'{key}.label' must be a non-empty string; received {label!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
        raise SpecError(f"'{key}.step' must be an int; received {step!r}")
    if source in bundled_names():
        return source, label or source, step
    folder = (base / source).expanduser().resolve()
    if not folder.is_dir():
        raise SpecError(f"'{key}.source' must be a bundled name ({bundled_names()}) or an existing folder; received "
                        f"{source!r}, and {folder} is not a folder")
    return str(folder), label or folder.name, step


def _glob(pattern: Any, base: Path, key: str) -> list[tuple[str, str, int | None]]:
    if not isinstance(pattern, str) or not pattern:
        raise SpecError(f"'{key}.glob' must be a folder pattern such as 'checkpoints/step-*'; received {pattern!r}")
    folders = [Path(p).resolve() for p in glob.glob(os.path.join(base, os.path.expanduser(pattern)))
               if Path(p).is_dir()]
    if not folders:
        raise SpecError(f"'{key}.glob' = {pattern!r} matches no folder (relative to {base})")
    found = [(str(p), p.name, _step(p.name)) for p in folders]
    return sorted(found, key=lambda m: (m[2] is None, m[2] or 0, m[1]))


def _step(name: str) -> int | None:
    """The last integer in a folder name (checkpoint-500 → 500), None when there is none."""
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None
