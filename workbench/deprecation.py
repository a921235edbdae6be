"""Names that moved: the old import path keeps working for one release and warns where the name now lives."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved(old_module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module`` that serves each moved name from its new module
    (``names``: name → new module) with a :class:`DeprecationWarning` naming the new import.

    Example: ``__getattr__ = moved("workbench.old", {"train_sae": "workbench.sae.training"})  # in workbench/old.py``"""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} moved to {names[name]}.{name}; import it from there (the old path goes "
                      f"away in the next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
