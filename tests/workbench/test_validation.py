"""workbench.validation: each check accepts what it should, refuses bools as numbers, NaN/inf, out-of-range values
and wrong choices, and says so in the one message format; constraint tables cover every analysis config field."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import re
import sys

import pytest

from tests.helpers import PLUGIN
from workbench import registry
from workbench.errors import ConfigError
from workbench.results import Config
from workbench.validation import (
    Bool,
    Choice,
    DictOf,
    Int,
    ListOf,
    Number,
    Optional,
    Str,
    check_bool,
    check_choice,
    check_int,
    check_list,
    check_number,
    check_optional,
    check_str,
    is_int,
    is_number,
)


def refused(check, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        check(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# predicates


@pytest.mark.parametrize("value", [0, -3, 10**30])
def test_is_int_accepts_ints(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1]])
def test_is_int_refuses_bools_floats_and_others(value):
    assert not is_int(value)


@pytest.mark.parametrize("value", [0, 1.5, -2, 1e308])
def test_is_number_accepts_finite_numbers(value):
    assert is_number(value)


@pytest.mark.parametrize("value", [True, False, math.nan, math.inf, -math.inf, 10**400, "1", None])
def test_is_number_refuses_bools_non_finite_and_others(value):
    assert not is_number(value)


# ---------------------------------------------------------------------------------------------------------------------
# check functions: value back, or the exact message


def test_check_int_returns_the_value_and_states_the_rule():
    assert check_int("f", "n", 3, low=1) == 3
    assert refused(check_int, "f", "n", 0, low=1) == "f(): parameter 'n' must be an int >= 1; received 0"
    assert refused(check_int, "f", "n", True, low=0) == "f(): parameter 'n' must be an int >= 0; received True"
    assert refused(check_int, "f", "n", 2.0) == "f(): parameter 'n' must be an int; received 2.0"


@pytest.mark.parametrize(("kwargs", "ok", "bad", "allowed"), [
    ({"low": 0, "high": 8, "high_open": True}, [0, 7], [-1, 8], "an int in [0, 8)"),
    ({"low": 2, "high": 5, "low_open": True}, [3, 5], [2, 6], "an int in (2, 5]"),
    ({"high": 4}, [-10, 4], [5], "an int <= 4"),
    ({"high": 4, "high_open": True}, [3], [4], "an int < 4"),
    ({"low": 0, "low_open": True}, [1], [0], "an int > 0"),
])
def test_check_int_bounds(kwargs, ok, bad, allowed):
    for value in ok:
        assert check_int("f", "n", value, **kwargs) == value
    for value in bad:
        assert refused(check_int, "f", "n", value, **kwargs) == f"f(): parameter 'n' must be {allowed}; received {value}"


def test_check_int_allowed_replaces_the_wording():
    message = refused(check_int, "weight", "layer", -2, low=-1, allowed="an int >= -1 (-1 = the last layer)")
    assert message == "weight(): parameter 'layer' must be an int >= -1 (-1 = the last layer); received -2"


def test_check_number_converts_to_float_and_refuses_bools_and_non_finite_values():
    value = check_number("f", "eps", 0, low=0)
    assert value == 0.0 and isinstance(value, float)
    for bad in (True, math.nan, math.inf, -math.inf, "0.5", None):
        assert refused(check_number, "f", "eps", bad, low=0) == f"f(): parameter 'eps' must be a number >= 0; received {bad!r}"


@pytest.mark.parametrize(("kwargs", "ok", "bad", "allowed"), [
    ({"low": 0, "high": 1, "low_open": True, "high_open": True}, [0.5, 1e-9], [0, 1, -0.1], "a number in (0, 1)"),
    ({"low": 0, "high": 1, "high_open": True}, [0, 0.99], [1, -1e-9], "a number in [0, 1)"),
    ({"low": 0, "high": 1, "low_open": True}, [1], [0], "a number in (0, 1]"),
    ({"low": 0, "low_open": True}, [1e-300], [0, -1], "a number > 0"),
    ({}, [-1e300, 0], [], "a number"),
])
def test_check_number_bounds(kwargs, ok, bad, allowed):
    for value in ok:
        assert check_number("f", "x", value, **kwargs) == value
    for value in bad:
        assert refused(check_number, "f", "x", value, **kwargs) == f"f(): parameter 'x' must be {allowed}; received {value!r}"


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_accepts_bools(value):
    assert check_bool("f", "center", value) is value


@pytest.mark.parametrize("value", [0, 1, "True", None])
def test_check_bool_refuses_ints_and_strings(value):
    assert refused(check_bool, "f", "center", value) == f"f(): parameter 'center' must be True or False; received {value!r}"


def test_check_choice():
    assert check_choice("f", "route", "dense", ("factor", "dense")) == "dense"
    message = refused(check_choice, "f", "route", "Dense", ("factor", "dense"))
    assert message == "f(): parameter 'route' must be one of ['factor', 'dense']; received 'Dense'"
    assert "one of ['a', 'b']" in refused(check_choice, "f", "kind", ["a"], {"a": 1, "b": 2})  # unhashable: refused
    assert "received True" in refused(check_choice, "f", "n", True, (1, 2))  # True == 1, but a bool is not a choice


def test_check_str():
    assert check_str("f", "prompt", "hi", nonempty=True) == "hi"
    assert refused(check_str, "f", "prompt", "  ", nonempty=True) == "f(): parameter 'prompt' must be a non-empty str; received '  '"
    assert refused(check_str, "f", "path", 3) == "f(): parameter 'path' must be a str; received 3"


def test_check_optional():
    assert check_optional("f", "n", None, Int(low=1)) is None
    assert check_optional("f", "n", 4, Int(low=1)) == 4
    assert refused(check_optional, "f", "n", 0, Int(low=1)) == "f(): parameter 'n' must be None or an int >= 1; received 0"


def test_check_list():
    assert check_list("f", "shape", (3, 4), Int(low=1), length=2) == [3, 4]
    assert check_list("f", "xs", [1, 2.5], Number()) == [1.0, 2.5]
    for bad in ([3], [3, 0], [3, True], "34", None):
        assert "must be a 2-item list of ints >= 1" in refused(check_list, "f", "shape", bad, Int(low=1), length=2)
    message = refused(check_list, "f", "kinds", ["a", "a"], Choice(("a", "b")), nonempty=True, distinct=True)
    assert message == "f(): parameter 'kinds' must be a non-empty list of distinct values from ['a', 'b']; received ['a', 'a']"
    assert refused(check_list, "f", "xs", [], Number(), nonempty=True).startswith(
        "f(): parameter 'xs' must be a non-empty list of numbers;")


def test_long_values_are_shortened_in_the_message():
    message = refused(check_list, "f", "xs", list(range(1000)), Int(), length=1)
    assert message.endswith("...") and len(message) < 250


# ---------------------------------------------------------------------------------------------------------------------
# constraint texts, composition


@pytest.mark.parametrize(("constraint", "allowed"), [
    (Int(low=1, odd=True), "an odd int >= 1"),
    (Optional(ListOf(Str(nonempty=True), nonempty=True)), "None or a non-empty list of non-empty strings"),
    (ListOf(Number(low=0, low_open=True), nonempty=True), "a non-empty list of numbers > 0"),
    (ListOf(Bool()), "a list of bools"),
    (DictOf(Str(nonempty=True), Int(low=0)), "a dict of non-empty strings → ints >= 0"),
    (Optional(Number(low=0)), "None or a number >= 0"),
    (Choice({"x": 1, "y": 2}), "one of ['x', 'y']"),
    (Int(allowed_text=lambda: "computed late"), "computed late"),
])
def test_generated_wording(constraint, allowed):
    assert constraint.allowed == allowed


def test_odd_int():
    rule = Int(low=1, odd=True)
    assert rule.check("f", "kernel_size", 3) == 3
    for bad in (2, -1, True):
        assert "must be an odd int >= 1" in refused(rule.check, "f", "kernel_size", bad)


def test_where_refines_a_constraint_and_replaces_its_wording():
    consecutive = ListOf(Int(low=0), nonempty=True).where(lambda xs: all(b == a + 1 for a, b in zip(xs, xs[1:])),
                                                           "consecutive layer indices")
    assert consecutive.check("f", "layers", (3, 4, 5)) == [3, 4, 5]
    for bad in ([3, 5], [], [-1, 0], "34"):
        assert "must be consecutive layer indices;" in refused(consecutive.check, "f", "layers", bad)
    nonzero = ListOf(Number().where(lambda a: a != 0, "a non-zero number", "non-zero numbers"))
    assert nonzero.allowed == "a list of non-zero numbers"
    assert "received [1, 0]" in refused(nonzero.check, "f", "alphas", [1, 0])


def test_dict_of():
    rule = DictOf(Str(nonempty=True), Str().where(lambda v: v.endswith(".npy"), "a .npy path"), nonempty=True)
    assert rule.check("f", "files", {"a": "x.npy"}) == {"a": "x.npy"}
    for bad in ({}, {"": "x.npy"}, {"a": "x.pt"}, {"a": 1}, [("a", "x.npy")]):
        refused(rule.check, "f", "files", bad)


# ---------------------------------------------------------------------------------------------------------------------
# a property test (seeded random values, no hypothesis dependency): Int/Number agree with the predicates and bounds


def _values(rng: random.Random) -> list:
    pool = [True, False, None, "3", [1], math.nan, math.inf, -math.inf, 10**400]
    pool += [rng.randint(-50, 50) for _ in range(200)] + [rng.uniform(-50, 50) for _ in range(200)]
    return pool


@pytest.mark.parametrize("seed", range(5))
def test_int_and_number_match_their_definition(seed):
    rng = random.Random(seed)
    low, high = sorted(rng.sample(range(-20, 21), 2))
    low_open, high_open = rng.random() < 0.5, rng.random() < 0.5
    for value in _values(rng):
        in_range = is_number(value) and (low < value if low_open else low <= value) and (
            value < high if high_open else value <= high)
        for rule, kind_ok in ((Int(low, high, low_open, high_open), is_int(value)),
                              (Number(low, high, low_open, high_open), is_number(value))):
            expect = kind_ok and in_range
            assert rule.accepts(value) == expect, (rule, value)
            if not expect:
                message = refused(rule.check, "f", "v", value)
                assert re.fullmatch(r"f\(\): parameter 'v' must be .+; received .+", message)


# ---------------------------------------------------------------------------------------------------------------------
# analysis configs: one constraint per field, checked by Config.validate


def _plugin_config() -> type[Config]:
    spec = importlib.util.spec_from_file_location("wb_weight_norms_validation", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building the class
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module.WeightNormsConfig


# every registered analysis, and the third-party example of CONTRIBUTING.md
CONFIGS = {name: registry.get(name).config for name in registry.names()} | {"wb_weight_norms": _plugin_config()}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_field_has_a_constraint(name):
    config = CONFIGS[name]
    fields = {f.name for f in dataclasses.fields(config)}
    assert set(config.constraints) == fields, (
        f"{config.__name__}: fields without a constraint {sorted(fields - set(config.constraints))}, constraints "
        f"without a field {sorted(set(config.constraints) - fields)}")
    for field, constraint in config.constraints.items():
        assert constraint.allowed, f"{config.__name__}.{field}: a constraint with no wording"


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_refuse_a_bool_for_every_non_bool_field(name):
    config = CONFIGS[name]
    for field, constraint in config.constraints.items():
        if not constraint.accepts(True):
            with pytest.raises(ConfigError, match=re.escape(f"{config.__name__}(): parameter {field!r} must be ")):
                config(**{field: True})


def test_a_config_missing_a_constraint_is_a_programming_error():
    @dataclasses.dataclass(frozen=True)
    class Incomplete(Config):
        kind = "incomplete_config"
        a: int = 1
        b: int = 2
        constraints = {"a": Int()}

    with pytest.raises(TypeError, match=r"missing \['b'\]"):
        Incomplete()


def test_a_validate_override_adds_cross_field_rules_after_the_table():
    @dataclasses.dataclass(frozen=True)
    class Window(Config):
        kind = "window_config"
        first: int = 0
        last: int = 1
        constraints = {"first": Int(low=0), "last": Int()}

        def validate(self) -> None:
            super().validate()
            self.check("last", self.last >= self.first, f"an int >= first ({self.first})")

    assert Window(first=2, last=3).last == 3
    assert "parameter 'first' must be an int >= 0" in refused(Window, first=-1)
    assert refused(Window, first=2, last=1) == "Window(): parameter 'last' must be an int >= first (2); received 1"
