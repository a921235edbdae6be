"""Progress bars a front end can take over: tqdm in a terminal or notebook, a callback in the dashboard.

Every long loop in the library uses :func:`bar` (same arguments as ``tqdm``: ``total``, ``desc``, ``disable``,
``leave``, ``unit``). Inside ``with reporting(callback):`` each bar calls ``callback(desc, done, total)`` when it
starts and after every step, whether or not ``progress`` was asked for, and draws no terminal bar. A callback that
raises stops the work at that step — the dashboard's Cancel relies on it — and the exception propagates as usual
(hooks and weight edits are released by their own ``finally`` blocks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tqdm.auto import tqdm

Callback = Callable[[str, int, "int | None"], None]
_CALLBACK: ContextVar[Callback | None] = ContextVar("workbench_progress_callback", default=None)


class Bar:
    """A tqdm bar that also reports to the active :func:`reporting` callback.

    Example: ``with reporting(print): n = sum(1 for _ in Bar(range(3), desc="steps"))  # print gets each step``"""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 disable: bool = False, leave: bool = True, unit: str = "it") -> None:
        self._callback = _CALLBACK.get()
        self._iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.n = total, desc, 0
        self._tqdm = tqdm(total=total, desc=desc, disable=disable or self._callback is not None, leave=leave,
                          unit=unit)
        if self._callback is not None:
            self._callback(desc, 0, total)

    def update(self, n: int = 1) -> None:
        """Advance the bar by ``n`` and tell the active :func:`reporting` callback ``(desc, done, total)``.

        Example: ``b = bar(total=10, desc="cells"); b.update(2)``"""
        self.n += n
        self._tqdm.update(n)
        if self._callback is not None:
            self._callback(self.desc, self.n, self.total)

    def close(self) -> None:
        """Close the terminal bar (the callback, if any, has already seen the last update).

        Example: ``b.close()``"""
        self._tqdm.close()

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("this bar was created without an iterable")
        try:
            for item in self._iterable:
                yield item
                self.update()
        finally:
            self.close()


def bar(iterable: Iterable | None = None, **kwargs: Any) -> Bar:
    """A progress bar over ``iterable`` (or a manual one with ``total=``); see the module docstring.

    Example: ``for text in bar(texts, desc="capture", disable=not progress): ...``"""
    return Bar(iterable, **kwargs)


@contextmanager
def reporting(callback: Callback):
    """Send every bar's progress in this context (this thread) to ``callback(desc, done, total)``.

    Example: ``with reporting(lambda desc, done, total: print(desc, done, total)): run_analysis(lm, "rankme")``"""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)
