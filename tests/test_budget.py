"""mb.parse_budget: every accepted form, and every bad form with the right
exception type and a message naming the argument. Expected values are
written out by hand (KiB = 2**10, MiB = 2**20, GB = 10**9)."""

import math

import pytest

import memopt_bptt as mb


@pytest.mark.parametrize("budget,expected", [
    (1, ("bytes", 1)),
    (4096, ("bytes", 4096)),
    (10**12, ("bytes", 10**12)),
    ("4096", ("bytes", 4096)),
    ("512KiB", ("bytes", 512 * 1024)),
    ("64MiB", ("bytes", 64 * 1024 * 1024)),
    ("1GiB", ("bytes", 1024**3)),
    ("1GB", ("bytes", 1_000_000_000)),
    ("2kB", ("bytes", 2000)),
    ("1.5MiB", ("bytes", 1572864)),
    ("  64 MiB  ", ("bytes", 64 * 2**20)),
    ("64mib", ("bytes", 64 * 2**20)),
    ("2.5e6B", ("bytes", 2_500_000)),
    ("5%", ("fraction", 0.05)),
    ("0.5", ("fraction", 0.5)),   # a bare non-integer reads as the float it spells (issue 15)
    ("100%", ("fraction", 1.0)),
    ("0.5%", ("fraction", 0.005)),
    (0.05, ("fraction", 0.05)),
    (1.0, ("fraction", 1.0)),
    (1e-9, ("fraction", 1e-9)),
])
def test_accepted_forms(budget, expected):
    kind, value = mb.parse_budget(budget)
    assert kind == expected[0]
    assert value == pytest.approx(expected[1], rel=1e-12)
    if kind == "bytes":
        assert value == int(value) and value >= 1


@pytest.mark.parametrize("budget,exc", [
    ("5 parsecs", ValueError),
    ("-3MiB", ValueError),
    ("MiB", ValueError),
    ("", ValueError),
    ("64 MiB extra", ValueError),
    ("0", ValueError),
    ("0MiB", ValueError),
    ("1.5", ValueError),       # a bare non-integer is a fraction, as on the command line (issue 15)
    ("0%", ValueError),
    ("-5%", ValueError),
    ("150%", ValueError),
    ("nan%", ValueError),
    ("abc%", ValueError),
    (0, ValueError),
    (-1, ValueError),
    (1.5, ValueError),         # a float is a fraction of plain BPTT's memory
    (0.0, ValueError),
    (-0.1, ValueError),
    (float("nan"), ValueError),
    (float("inf"), ValueError),
    (True, TypeError),
    (False, TypeError),
    (None, TypeError),
    ([1], TypeError),
    ({"bytes": 1}, TypeError),
    (b"64MiB", TypeError),
])
def test_bad_forms_raise_and_name_budget(budget, exc):
    with pytest.raises(exc) as info:
        mb.parse_budget(budget)
    assert "budget" in str(info.value), str(info.value)
    assert not isinstance(info.value, mb.MemoryBudgetError)  # a bad form is not "too small"


def test_message_names_a_custom_argument():
    with pytest.raises(ValueError, match="max_memory"):
        mb.parse_budget("lots", name="max_memory")


def test_bad_forms_reach_plan_with_the_argument_named():
    model = mb.Sequence(mb.Elman(input_size=2, hidden_size=3), output_size=1, loss="mse")
    for bad in ("5 parsecs", -1, 1.5, math.nan):
        with pytest.raises(ValueError, match="budget"):
            mb.plan(10, budget=bad, model=model, batch=2)
    with pytest.raises(TypeError, match="budget"):
        mb.plan(10, budget=[1], model=model, batch=2)


def test_memory_budget_error_is_a_value_error():
    assert issubclass(mb.MemoryBudgetError, ValueError)
    err = mb.MemoryBudgetError("too small", least_bytes=123)
    assert err.least_bytes == 123 and err.least_units is None


def test_numpy_floats_are_fractions():
    np = pytest.importorskip("numpy")
    assert mb.parse_budget(np.float64(0.25)) == ("fraction", 0.25)


def test_numpy_integers_are_bytes():
    np = pytest.importorskip("numpy")
    assert mb.parse_budget(np.int64(4096)) == ("bytes", 4096)
