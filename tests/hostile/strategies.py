"""Hypothesis strategies for hostile input (imported by the tests in this folder as ``tests.hostile.strategies``)."""

from __future__ import annotations

import builtins
import json

from hypothesis import strategies as st

NASTY_NUMBERS = [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63) - 1,
                 10**30, -(10**30), 2**1000, -1, 0, 1]
NASTY_TEXT = ["", " ", "\t\n", "\x00", "\x1b[31m", "\u202e", "\ufeff", "\u2028", "é" * 3, "💥", "../../etc/passwd",
              "/dev/zero", "bundled", "bundled:", "bundled:no-such-category", "report", "cuda", "W_Q", "last", "x.jsonl",
              "x.npy", "NaN", "null", "a" * 10_000]

atoms = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(NASTY_NUMBERS),
    st.text(max_size=20), st.text(st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Zl", "Zp", "So"]),
                                  max_size=10),
    st.sampled_from(NASTY_TEXT), st.binary(max_size=8), st.complex_numbers(), st.just(object()), st.just(Ellipsis),
)

junk = st.recursive(
    atoms,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=4),
                            st.frozensets(st.one_of(st.integers(), st.text(max_size=4)), max_size=3)),
    max_leaves=12,
)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.sampled_from(NASTY_TEXT)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def json_text(value: object) -> str:
    """``value`` as JSON text the way a careless writer would leave it (NaN/Infinity literals allowed)."""
    return json.dumps(value, ensure_ascii=False)


class Payload:
    """A pickle that would create ``marker`` when unpickled (the classic ``__reduce__`` code-execution payload)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")
