"""One place for input checks: predicates, ``check_*`` functions and the constraint classes configs declare.

Every check raises :class:`~workbench.errors.ConfigError` in the one message format of :mod:`workbench.errors`,
``call(): parameter 'name' must be <allowed>; received <repr>``, and returns the value (an int as ``int``, a number as
``float``), so a call site reads ``eps = check_number(call, "eps", eps, low=0)``. Two rules hold everywhere:

* ``True``/``False`` are never ints or numbers (Python's ``bool`` subclasses ``int``; no parameter means a count);
* numbers are finite: NaN and ±inf are rejected wherever a number is checked.

A constraint (``Int(low=1)``, ``Number(low=0, high=1, high_open=True)``, ``Choice(KINDS)``, ``Bool()``, ``Str()``,
``Optional(c)``, ``ListOf(c)``, ``DictOf(k, v)``, ``c.where(predicate, allowed)``) knows its ``allowed`` text and has
``check(call, name, value)``; analysis configs list one per field in ``constraints`` (the scikit-learn
``_parameter_constraints`` habit) and :meth:`workbench.results.Config.validate` checks them all. Every constraint takes
``allowed=`` to replace its generated wording where a call site says more (``"an int >= -1 (-1 = the last layer)"``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import config_error

# ---------------------------------------------------------------------------------------------------------------------
# predicates


def is_int(x: object) -> bool:
    """An int that is not a bool (``True`` is an int in Python; no parameter means it as a count).

    Example: ``is_int(3), is_int(True)  # (True, False)``"""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """A finite int or float that is not a bool.

    Example: ``is_number(0.5), is_number(float("nan"))  # (True, False)``"""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


# ---------------------------------------------------------------------------------------------------------------------
# constraints


class Constraint:
    """One rule for one value. Subclasses implement ``accepts``, ``_allowed`` (the words after "must be") and
    ``_plural`` (how a list names its items: ``"ints >= 1"``); ``convert`` turns an accepted value into the one
    returned by ``check``.

    Example: ``Int(low=1).check("capture", "batch_size", 8)  # 8; every Constraint has check/accepts/where``"""

    allowed_text: str | Callable[[], str] | None = None  # replaces the generated wording (a callable: computed late)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies the rule (no conversion, no error).

        Example: ``Int(low=1).accepts(0)  # False``"""
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The accepted ``value`` as ``check`` returns it (e.g. a Number as float; the identity by default).

        Example: ``Number().convert(3)  # 3.0``"""
        return value

    def _allowed(self) -> str:
        raise NotImplementedError

    def _plural(self) -> str:
        return f"values that are each {self.allowed}"

    @property
    def allowed(self) -> str:
        text = self.allowed_text
        if text is None:
            return self._allowed()
        return text() if callable(text) else text

    @property
    def plural(self) -> str:
        return self._plural()

    def check(self, call: str, name: str, value: Any) -> Any:
        """``value`` (converted) when accepted, else raise ``ConfigError`` naming ``call``, ``name`` and the rule.

        Example: ``Number(low=0, low_open=True).check("rankme", "eps", 1e-7)``"""
        try:
            ok = self.accepts(value)
        except (TypeError, ValueError, OverflowError):  # a predicate applied to a value of an unexpected type
            ok = False
        if not ok:
            raise config_error(call, name, self.allowed, value)
        return self.convert(value)

    def where(self, predicate: Callable[[Any], bool], allowed: str, plural: str | None = None) -> Where:
        """This constraint and ``predicate`` (called only on accepted values), described as ``allowed``.

        Example: ``ListOf(Int(low=0), nonempty=True).where(lambda xs: sorted(xs) == xs, "increasing layer indices")``"""
        return Where(self, predicate, allowed, plural)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def _within(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (value <= low if low_open else value < low):
        return False
    return not (high is not None and (value >= high if high_open else value > high))


@dataclass(frozen=True)
class Int(Constraint):
    """An int (not a bool) with optional bounds: ``low``/``high`` inclusive unless ``low_open``/``high_open``;
    ``odd`` asks for an odd one.

    Example: ``Int(low=1, odd=True).check("token_maps", "kernel_size", 3)``"""

    low: int | None = None
    high: int | None = None
    low_open: bool = False
    high_open: bool = False
    odd: bool = False
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return (is_int(value) and _within(value, self.low, self.high, self.low_open, self.high_open)
                and (not self.odd or value % 2 == 1))

    def convert(self, value: Any) -> int:
        return int(value)

    def _allowed(self) -> str:
        return f"an {'odd ' if self.odd else ''}int{_bounds(self.low, self.high, self.low_open, self.high_open)}"

    def _plural(self) -> str:
        return f"{'odd ' if self.odd else ''}ints{_bounds(self.low, self.high, self.low_open, self.high_open)}"


@dataclass(frozen=True)
class Number(Constraint):
    """A finite int or float (not a bool), returned as float; bounds as :class:`Int`.

    Example: ``Number(low=0, high=1, low_open=True, high_open=True).check("subspace_patching", "test_fraction", 0.2)``"""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return is_number(value) and _within(value, self.low, self.high, self.low_open, self.high_open)

    def convert(self, value: Any) -> float:
        return float(value)

    def _allowed(self) -> str:
        return f"a number{_bounds(self.low, self.high, self.low_open, self.high_open)}"

    def _plural(self) -> str:
        return f"numbers{_bounds(self.low, self.high, self.low_open, self.high_open)}"


@dataclass(frozen=True)
class Bool(Constraint):
    """``True`` or ``False`` (not 0/1, not a truthy string).

    Example: ``Bool().check("rankme", "center", True)``"""

    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def _allowed(self) -> str:
        return "True or False"

    def _plural(self) -> str:
        return "bools"


@dataclass(frozen=True)
class Choice(Constraint):
    """One of ``choices`` (a tuple, list or dict's keys); the message lists them.

    Example: ``Choice(("l2", "standardised")).check("language_neurons", "inputs", "l2")``"""

    choices: Iterable[Any]
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return not isinstance(value, bool) and value in self.choices

    def _allowed(self) -> str:
        return f"one of {list(self.choices)}"

    def _plural(self) -> str:
        return f"values from {list(self.choices)}"


@dataclass(frozen=True)
class Str(Constraint):
    """A str; ``nonempty``: with a non-blank character.

    Example: ``Str(nonempty=True).check("erank_dynamics", "prompt", "Why is the sky blue?")``"""

    nonempty: bool = False
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (not self.nonempty or bool(value.strip()))

    def _allowed(self) -> str:
        return "a non-empty str" if self.nonempty else "a str"

    def _plural(self) -> str:
        return "non-empty strings" if self.nonempty else "strings"


@dataclass(frozen=True)
class Optional(Constraint):
    """``None`` or what ``inner`` accepts ("None or <inner>").

    Example: ``Optional(ListOf(Int(low=0))).check("activation_spectra", "layers", None)``"""

    inner: Constraint
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return value is None or self.inner.accepts(value)

    def convert(self, value: Any) -> Any:
        return None if value is None else self.inner.convert(value)

    def _allowed(self) -> str:
        return f"None or {self.inner.allowed}"


@dataclass(frozen=True)
class ListOf(Constraint):
    """A list or tuple whose items ``item`` accepts (returned as a list of converted items); ``nonempty``,
    ``distinct`` (no repeats) and ``length`` (exactly that many) as named.

    Example: ``ListOf(Str(nonempty=True), nonempty=True, distinct=True).check("rankme", "poolings", ["last", "mean"])``"""

    item: Constraint
    nonempty: bool = False
    distinct: bool = False
    length: int | None = None
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            return False
        if self.length is not None and len(value) != self.length:
            return False
        if not all(self.item.accepts(v) for v in value):
            return False
        return not self.distinct or len(set(value)) == len(value)

    def convert(self, value: Any) -> list:
        return [self.item.convert(v) for v in value]

    def _allowed(self) -> str:
        size = f"{self.length}-item " if self.length is not None else "non-empty " if self.nonempty else ""
        return f"a {size}list of {'distinct ' if self.distinct else ''}{self.item.plural}"


@dataclass(frozen=True)
class DictOf(Constraint):
    """A dict whose keys ``key`` and values ``value`` accept; ``nonempty`` as named.

    Example: ``DictOf(Str(nonempty=True), Str(), nonempty=True).check("rankme", "prompt_sets", {"a": "report"})``"""

    key: Constraint = Str(nonempty=True)
    value: Constraint = Str()
    nonempty: bool = False
    allowed_text: str | Callable[[], str] | None = None

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, dict) and (not self.nonempty or bool(value))
                and all(self.key.accepts(k) and self.value.accepts(v) for k, v in value.items()))

    def convert(self, value: Any) -> dict:
        return {self.key.convert(k): self.value.convert(v) for k, v in value.items()}

    def _allowed(self) -> str:
        return f"a {'non-empty ' if self.nonempty else ''}dict of {self.key.plural} → {self.value.plural}"


@dataclass(frozen=True)
class Where(Constraint):
    """``base`` and ``predicate`` (called only on values ``base`` accepts), described as ``allowed_text``; built by
    :meth:`Constraint.where`.

    Example: ``w: Where = Int(low=0).where(lambda x: x % 2 == 0, "an even int >= 0")``"""

    base: Constraint
    predicate: Callable[[Any], bool]
    allowed_text: str | Callable[[], str] | None = None
    plural_text: str | None = None

    def accepts(self, value: Any) -> bool:
        return self.base.accepts(value) and bool(self.predicate(value))

    def convert(self, value: Any) -> Any:
        return self.base.convert(value)

    def _allowed(self) -> str:
        return self.base.allowed

    def _plural(self) -> str:
        return self.plural_text if self.plural_text is not None else super()._plural()


# A seed field: any int torch.Generator().manual_seed takes after the small offsets analyses add (seed + 1, seed + 2,
# seed + 1 + i); unbounded, a config accepted seed = 2**70 and the analysis failed deep inside with torch's
# "ValueError: Overflow when unpacking long long".
SEED = Int(low=-(2**62), high=2**62, allowed_text="an int in [-2**62, 2**62] (it seeds torch)")


# ---------------------------------------------------------------------------------------------------------------------
# check functions (library call sites)


def check_int(call: str, name: str, value: Any, *, low: int | None = None, high: int | None = None,
              low_open: bool = False, high_open: bool = False, allowed: str | None = None) -> int:
    """``value`` as an int, bounds inclusive unless open (``"an int >= 1"``, ``"an int in [0, 8)"``).

    Example: ``check_int("capture", "batch_size", 8, low=1)``"""
    return Int(low, high, low_open, high_open, allowed_text=allowed).check(call, name, value)


def check_number(call: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, allowed: str | None = None) -> float:
    """``value`` as a float: a finite int or float, not a bool (``"a number > 0"``, ``"a number in [0, 1)"``).

    Example: ``check_number("rankme", "eps", 1e-7, low=0, low_open=True)``"""
    return Number(low, high, low_open, high_open, allowed_text=allowed).check(call, name, value)


def check_bool(call: str, name: str, value: Any, *, allowed: str | None = None) -> bool:
    """``value`` when it is ``True`` or ``False``.

    Example: ``check_bool("capture", "exclude_bos", True)``"""
    return Bool(allowed_text=allowed).check(call, name, value)


def check_choice(call: str, name: str, value: Any, choices: Iterable[Any], *, allowed: str | None = None) -> Any:
    """``value`` when it is one of ``choices`` (``"one of ['a', 'b']"``).

    Example: ``check_choice("capture", "gram_dtype", "auto", ("auto", "float32", "float64"))``"""
    return Choice(choices, allowed_text=allowed).check(call, name, value)


def check_str(call: str, name: str, value: Any, *, nonempty: bool = False, allowed: str | None = None) -> str:
    """``value`` when it is a str (``nonempty``: not blank).

    Example: ``check_str("erank_dynamics", "prompt", "Why is the sky blue?", nonempty=True)``"""
    return Str(nonempty, allowed_text=allowed).check(call, name, value)


def check_optional(call: str, name: str, value: Any, constraint: Constraint) -> Any:
    """``None``, or ``value`` checked by ``constraint`` (the message says ``"None or <allowed>"``).

    Example: ``check_optional("capture", "max_tokens", None, Int(low=1))``"""
    return Optional(constraint).check(call, name, value)


def check_list(call: str, name: str, value: Any, item: Constraint, *, nonempty: bool = False, distinct: bool = False,
               length: int | None = None, allowed: str | None = None) -> list:
    """``value`` as a list of items each checked by ``item`` (a list or tuple is accepted).

    Example: ``check_list("steer2edit", "layers", [4, 5], Int(low=0), nonempty=True, distinct=True)``"""
    return ListOf(item, nonempty, distinct, length, allowed_text=allowed).check(call, name, value)


def check_within(call: str, name: str, path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path:
    """``path`` resolved (``~`` expanded, symlinks and ``..`` followed) when it lies inside one of ``roots`` (each
    resolved the same way); otherwise a ConfigError naming the parameter and the allowed roots. Why resolve first: a
    dashboard shared on a network takes folder paths from whoever opens it, and ``root/../etc`` or a symlink inside
    the root pointing out must not reach past the roots it was started with. No roots allow nothing.

    Example: ``check_within("dashboard", "reports folder", "reports/latest", [Path.cwd()])``"""
    allowed = [Path(r).expanduser().resolve() for r in roots]
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not a usable path either
        resolved = None
    if resolved is not None and any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        return resolved
    inside = ", ".join(str(r) for r in allowed) if allowed else "none configured"
    raise config_error(call, name, f"a path inside the allowed roots ({inside})", str(path))


__all__ = ["SEED", "Bool", "Choice", "Constraint", "DictOf", "Int", "ListOf", "Number", "Optional", "Str", "Where",
           "check_bool", "check_choice", "check_int", "check_list", "check_number", "check_optional", "check_str",
           "check_within", "is_int", "is_number"]
