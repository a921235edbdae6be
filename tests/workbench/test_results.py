"""The base classes of configs and results (workbench.results): JSON round trips, refusals that name what was wrong,
number formatting and the escaped HTML table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from workbench.errors import ConfigError
from workbench.results import Config, Result, Serialisable, fmt, setting, table_html


@dataclass(frozen=True)
class Point(Serialisable):
    kind: ClassVar[str] = "test_point"
    name: str
    values: list[float]
    meta: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Other(Serialisable):
    kind: ClassVar[str] = "test_other"
    name: str


def test_round_trip_through_dict_and_json():
    p = Point("a", [1.0, 2.5, -3.0], {"n": 3})
    assert p.to_dict() == {"kind": "test_point", "name": "a", "values": [1.0, 2.5, -3.0], "meta": {"n": 3}}
    assert Point.from_dict(p.to_dict()) == p
    assert Point.from_json(p.to_json()) == p
    assert json.loads(p.to_json())["kind"] == "test_point"
    assert Point.from_dict({"name": "b", "values": []}) == Point("b", [])  # no kind: the class's own


def test_from_dict_refuses_another_kind():
    with pytest.raises(ConfigError, match=r"Point.from_dict\(\): parameter \"data\['kind'\]\" must be 'test_point'; "
                                          r"received 'test_other'"):
        Point.from_dict(Other("x").to_dict())


def test_from_dict_names_the_unknown_keys():
    data = Point("a", [1.0]).to_dict() | {"colour": "red", "alpha": 1}
    with pytest.raises(ConfigError, match=r"Point.from_dict\(\): parameter 'data' must be only the keys "
                                          r"\['meta', 'name', 'values'\]; received \['alpha', 'colour'\]"):
        Point.from_dict(data)


@pytest.mark.parametrize("value,text", [
    (float("nan"), "nan"), (float("inf"), "inf"), (-math.inf, "-inf"),
    (1 / 3, "0.3333"), (123456.0, "1.235e+05"), (2.0, "2"), (7, "7"), ("x", "x"), (True, "True"), (None, "None"),
])
def test_fmt(value, text):
    assert fmt(value) == text


def test_table_html_escapes_header_and_cells():
    page = table_html(["<b>name</b>", "value & more"], [["<script>alert(1)</script>", 0.5], ['"q"', float("nan")]])
    assert "<script>" not in page and "<b>" not in page
    assert "<th>&lt;b&gt;name&lt;/b&gt;</th><th>value &amp; more</th>" in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>0.5</td>" in page
    assert "<td>&quot;q&quot;</td><td>nan</td>" in page
    assert page.startswith('<table class="wb-table">') and page.count("<tr>") == 3
    assert table_html([], [[1]]) == ""  # no header: no table


@dataclass(frozen=True)
class Window(Config):
    kind: ClassVar[str] = "test_window"
    low: int = 0
    high: int = 10

    def validate(self) -> None:  # only the rule across fields, through Config.check
        self.check("high", self.high > self.low, f"greater than low={self.low}")


def test_config_check_message_names_the_class_the_field_and_the_value():
    assert Window(2, 3).high == 3
    with pytest.raises(ConfigError) as info:
        Window(low=5, high=1)
    assert str(info.value) == "Window(): parameter 'high' must be greater than low=5; received 1"


def test_result_defaults():
    @dataclass(frozen=True)
    class Empty(Result):
        kind: ClassVar[str] = "test_empty"

    r = Empty()
    assert r.table() == ([], []) and r.summary() == "" and r.title == "Result"
    with pytest.raises(NotImplementedError):
        r.figures()


@dataclass(frozen=True)
class Tabled(Result):
    """A result whose table is given (to test the default ``metrics``)."""

    kind: ClassVar[str] = "test_tabled"
    header: list[str]
    rows: list[list]

    def table(self):
        return self.header, self.rows


def test_metrics_from_a_site_table():
    rows = [["blocks.3.hook_resid_post", 12, 4.5, float("nan"), True, "n/a"], ["ln_final.hook_normalized", 1, 2.0,
                                                                               float("inf"), False, "x"]]
    got = Tabled(["site", "tokens", "erank", "alpha", "flag", "note"], rows).metrics()
    assert got[:2] == [("tokens", 3, "blocks.3.hook_resid_post", 12.0), ("erank", 3, "blocks.3.hook_resid_post", 4.5)]
    assert got[2][:3] == ("alpha", 3, "blocks.3.hook_resid_post") and math.isnan(got[2][3])
    assert got[3:] == [("tokens", None, "ln_final.hook_normalized", 1.0), ("erank", None, "ln_final.hook_normalized",
                                                                           2.0),
                       ("alpha", None, "ln_final.hook_normalized", math.inf)]  # bools and strings are not metrics
    assert all(isinstance(v, float) for *_, v in got)


def test_metrics_from_a_matrix_table_with_layer_and_head_columns():
    header = ["matrix", "layer", "head", "shape", "erank", "α"]
    rows = [["W_Q", 0, "-", "32×32", 7.5, 3.0], ["W_Q", 1, 2, "8×32", 3.25, "-"], ["W_E", "-", "-", "300×32", 20.0, "-"]]
    assert Tabled(header, rows).metrics() == [("erank", 0, "W_Q", 7.5), ("α", 0, "W_Q", 3.0),
                                              ("erank", 1, "W_Q.h2", 3.25), ("erank", None, "W_E", 20.0)]


def test_metrics_without_a_table_or_a_site_column():
    assert Result().metrics() == []
    assert Tabled(["dataset", "loss"], [["a", 1.5], ["b", "-"]]).metrics() == [("loss", None, None, 1.5)]


def test_metrics_fold_label_columns_into_the_site_only_when_keys_would_repeat():
    """Rows told apart by labels (a patch kind, a dataset) get every all-string column appended to the site, in
    column order; a column that mixes strings and numbers ("-" for missing) stays a metric column, and a table
    whose keys are unique keeps its plain sites (the "note" column above is not folded)."""
    header = ["dataset", "site", "patch", "FLDD", "hits"]
    rows = [["a", "blocks.2.hook_resid_post", "v", 0.5, 3], ["a", "blocks.2.hook_resid_post", "v_row", 0.25, "-"],
            ["b", "blocks.2.hook_resid_post", "v", 0.75, 4]]
    assert Tabled(header, rows).metrics() == [
        ("FLDD", 2, "blocks.2.hook_resid_post/a/v", 0.5), ("hits", 2, "blocks.2.hook_resid_post/a/v", 3.0),
        ("FLDD", 2, "blocks.2.hook_resid_post/a/v_row", 0.25),
        ("FLDD", 2, "blocks.2.hook_resid_post/b/v", 0.75), ("hits", 2, "blocks.2.hook_resid_post/b/v", 4.0)]
    no_site = Tabled(["dataset", "projection", "loss", "shape"], [["instruction", "W_Q", 1.5, "4×4"],
                                                                  ["instruction", "W_K", 1.25, ""]])
    assert no_site.metrics() == [("loss", None, "instruction/W_Q", 1.5), ("loss", None, "instruction/W_K", 1.25)]
    # a number that tells rows apart is a metric, not a label: the keys still repeat (override metrics() there)
    strengths = Tabled(["method", "strength", "margin"], [["steer", 0.5, 0.1], ["steer", 1.0, 0.2]]).metrics()
    assert [site for _, _, site, _ in strengths] == ["steer"] * 4


def test_setting_names_a_value_once():
    assert [setting("λ", v) for v in (2, 2.0, 0.05, 1e-7, -1.5)] == ["λ=2", "λ=2", "λ=0.05", "λ=1e-07", "λ=-1.5"]
    assert setting("seed", 3) == "seed=3" and setting("ρ", 0.1 + 0.2) == "ρ=0.30000000000000004"
