"""Exceptions raised by workbench, and the one message format they share.

Every error about user input says *which parameter* of *which call* was wrong, *what was allowed* and *what was
received* (the scikit-learn ``_param_validation`` habit), so a researcher can fix the call without reading our code.
"""

from __future__ import annotations

from typing import Any


class WorkbenchError(Exception):
    """Base class of every error raised on purpose by workbench.

    Example: ``issubclass(ConfigError, WorkbenchError)  # True: catch WorkbenchError for every deliberate error``"""


class ConfigError(WorkbenchError, ValueError):
    """A parameter value is outside what the call accepts.

    Example: ``pytest.raises(ConfigError, run_analysis, lm, "no_such_analysis")``"""


class ShapeError(WorkbenchError, ValueError):
    """A tensor argument has the wrong number of dimensions, size, dtype or contents.

    Example: ``isinstance(shape_error("rankme_of", "matrices[0]", "a 2-D tensor", "3-D"), ShapeError)  # True``"""


class SiteError(WorkbenchError, ValueError):
    """A hook site (TransformerLens hook name or glob pattern) does not exist on the model.

    Example: ``pytest.raises(SiteError, capture, lm, "Hello", sites="blocks.*.no_such_hook")``"""


class ModelLoadError(WorkbenchError, RuntimeError):
    """A model could not be loaded; the message says what to do about it.

    Example: ``pytest.raises(ModelLoadError, load_model, "no-such-model")``"""


class BudgetError(WorkbenchError, MemoryError):
    """A request would exceed the memory budget it was given.

    Example: ``pytest.raises(BudgetError, capture, lm, texts, sites=site("resid_post", 0), keep="full", memory_budget=0)``"""


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_message(call: str, param: str, allowed: str, received: Any) -> str:
    """The standard message: ``call(): parameter 'param' must be allowed; received value``.

    Example: ``param_message("capture", "batch_size", "an int >= 1", 0)  # "capture(): parameter 'batch_size' ..."``"""
    return f"{call}(): parameter {param!r} must be {allowed}; received {_short(received)}"


def config_error(call: str, param: str, allowed: str, received: Any) -> ConfigError:
    """Build a :class:`ConfigError` in the standard format (raise it at the call site).

    Example: ``raise config_error("my_analysis", "layers", "a non-empty list of ints", [])``"""
    return ConfigError(param_message(call, param, allowed, received))


def shape_error(call: str, param: str, allowed: str, received: Any) -> ShapeError:
    """Build a :class:`ShapeError` in the standard format (raise it at the call site).

    Example: ``raise shape_error("my_fn", "x", "a 2-D tensor", tuple(x.shape))``"""
    return ShapeError(param_message(call, param, allowed, received))


class FigureExportError(WorkbenchError, RuntimeError):
    """A figure could not be written as an image (no Chromium for kaleido, or kaleido missing); says what to install.

    Example: ``pytest.raises(FigureExportError, result.save_figures, "figures")  # when no Chromium is installed``"""


class DiskFullError(WorkbenchError, OSError):
    """The disk (or quota) filled up while writing an output; nothing partial was left, the message names the path.

    Example: ``pytest.raises(DiskFullError, report.write, "reports/run")  # when the disk is full``"""


class BusyError(WorkbenchError, RuntimeError):
    """Another process holds the lock of the output being written, longer than this call would wait.

    Example: ``pytest.raises(BusyError, replace_folder, target, fill)  # while another process writes target``"""
