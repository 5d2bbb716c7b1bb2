"""Schedule tests: immutability, the simulator catching corrupted schedules,
JSON round trips, printing and the time model. Schedules are written by hand
here (the rows are derived in tests/test_planner.py's golden table); no
executor code runs."""

import dataclasses
import json
import re

import numpy as np
import pytest

import memopt_bptt as mb


def codes_of(text):
    """'takeshot(0@0) advance->1 keep(2@w)' -> int array of (op, step, slot); w = -1."""
    rows = []
    for token in text.split():
        m = re.match(r"^(?:advance->(-?\d+)|(\w+)\((-?\d+)@(w|-?\d+)\))$", token)
        assert m, token
        if m.group(1) is not None:
            rows.append((mb.OPS.index("advance"), int(m.group(1)), -1))
        else:
            op = mb.OPS.index(m.group(2)) if m.group(2) in mb.OPS else int(m.group(2)[2:])  # "op9" = code 9
            rows.append((op, int(m.group(3)), -1 if m.group(4) == "w" else int(m.group(4))))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def hand(text, *, T, pool, forwards, hq=1, kq=1, policy="hand"):
    return mb.Schedule(T=T, policy=policy, codes=codes_of(text), hidden_quanta=hq, internal_quanta=kq,
                       pool_quanta=pool, forward_steps=forwards)


# T=3 with two hidden slots: C(3, 2) = 5 (checkpoint s_1; see test_planner's golden table)
HSM3 = ("takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
        "restore(1@1) keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)")
# T=3 with room for one internal state (alpha = 1): keep I_1, 4 forwards
ISM3 = ("takeshot(0@0) keep(1@1) advance->2 keep(3@w) reverse(3@w) "
        "restore_internal(1@1) keep(2@w) reverse(2@w) reverse(1@1)")


def test_hand_schedules_are_valid():
    s = hand(HSM3, T=3, pool=2, forwards=5).validate()
    assert (s.n_hidden_slots, s.n_internal_slots) == (2, 0)
    assert s.hidden_positions == (0, 1) and s.internal_positions == ()
    s = hand(ISM3, T=3, pool=2, forwards=4).validate()
    assert (s.n_hidden_slots, s.n_internal_slots) == (1, 1)
    assert s.hidden_positions == (0,) and s.internal_positions == (1,)
    assert s.peak_units == 2


# (what is wrong, actions, T, pool quanta, forward steps, hq, kq)
CORRUPTED = [
    ("reverse out of order",
     "takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
     "restore(0@0) keep(1@w) reverse(1@w) restore(1@1) keep(2@w) reverse(2@w)", 3, 2, 5, 1, 1),
    ("step reversed twice",
     "takeshot(0@0) advance->2 keep(3@w) reverse(3@w) reverse(3@w) restore(0@0) advance->1 keep(2@w) "
     "reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)", 3, 1, 6, 1, 1),
    ("restore of a slot overwritten by a later takeshot",
     "takeshot(0@0) advance->1 takeshot(1@1) advance->2 takeshot(2@1) keep(3@w) reverse(3@w) "
     "restore(1@1) keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)", 3, 2, 5, 1, 1),
    ("s_0 overwritten",
     "takeshot(0@0) advance->1 takeshot(1@0) advance->2 keep(3@w) reverse(3@w) "
     "restore(1@0) keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)", 3, 2, 5, 1, 1),
    ("internal state partly overwritten (kq = 2, takeshot into its second quantum)",
     "takeshot(0@0) keep(1@1) takeshot(1@2) advance->2 keep(3@w) reverse(3@w) "
     "restore_internal(1@1) keep(2@w) reverse(2@w) reverse(1@1)", 3, 3, 4, 1, 2),
    ("restore of a hidden state kept as internal",
     ISM3.replace("restore_internal(1@1)", "restore(1@1)"), 3, 2, 4, 1, 1),
    ("restore_internal of a hidden slot",
     HSM3.replace("restore(1@1)", "restore_internal(1@1)"), 3, 2, 5, 1, 1),
    ("restore of the wrong position",
     HSM3.replace("restore(1@1)", "restore(2@1)"), 3, 2, 5, 1, 1),
    ("reverse with another step's internal state",
     ISM3.replace("reverse(1@1)", "reverse(1@0)"), 3, 2, 4, 1, 1),
    ("missing the last steps",
     "takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
     "restore(1@1) keep(2@w) reverse(2@w)", 3, 2, 4, 1, 1),
    ("missing a middle step",
     "takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
     "restore(0@0) keep(1@w) reverse(1@w)", 3, 2, 4, 1, 1),
    ("pool overflow (takeshot beyond the pool)", HSM3, 3, 1, 5, 1, 1),
    ("pool overflow (internal state straddles the end)", ISM3, 3, 2, 4, 1, 2),
    ("negative slot", HSM3.replace("takeshot(1@1)", "takeshot(1@-5)"), 3, 2, 5, 1, 1),
    ("keep from the wrong position",
     "takeshot(0@0) keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)", 2, 1, 2, 1, 1),
    ("keep past the end", "takeshot(0@0) advance->2 keep(3@w) " + "reverse(2@w)", 2, 1, 3, 1, 1),
    ("takeshot of a position the sweep is not at",
     HSM3.replace("takeshot(1@1)", "takeshot(2@1)"), 3, 2, 5, 1, 1),
    ("advance backwards",
     "takeshot(0@0) advance->2 advance->1 keep(2@w) reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)",
     2, 1, 3, 1, 1),
    ("advance past T", "takeshot(0@0) advance->5 keep(2@w) reverse(2@w)", 2, 1, 6, 1, 1),
    ("working buffer used after another forward clobbered it",
     "takeshot(0@0) advance->1 takeshot(1@1) advance->2 keep(3@w) reverse(3@w) "
     "restore(1@1) keep(2@w) restore(0@0) keep(1@w) reverse(2@w) reverse(1@w)", 3, 2, 5, 1, 1),
    ("working buffer never filled", "takeshot(0@0) advance->2 reverse(2@w) restore(0@0) keep(1@w) reverse(1@w)",
     2, 1, 3, 1, 1),
    ("working buffer holds a kept step (it was stored in the pool)",
     ISM3.replace("keep(2@w) reverse(2@w)", "keep(2@1) reverse(2@w)"), 3, 2, 4, 1, 1),
    ("forward count differs from forward_steps", HSM3, 3, 2, 4, 1, 1),
    ("unknown op code", HSM3 + " op9(0@0)", 3, 2, 5, 1, 1),
]


@pytest.mark.parametrize("what,text,T,pool,forwards,hq,kq", CORRUPTED, ids=[c[0] for c in CORRUPTED])
def test_validate_catches_corrupted_schedules(what, text, T, pool, forwards, hq, kq):
    s = hand(text, T=T, pool=pool, forwards=forwards, hq=hq, kq=kq)
    with pytest.raises(mb.ScheduleError):
        s.validate()
    assert issubclass(mb.ScheduleError, ValueError)


def test_schedule_rejects_badly_shaped_codes():
    with pytest.raises(ValueError, match="codes"):
        mb.Schedule(T=1, policy="hand", codes=np.zeros((3, 2), np.int64), hidden_quanta=1,
                    internal_quanta=1, pool_quanta=1, forward_steps=1)


# ---- immutability -------------------------------------------------------------
def test_schedule_is_frozen():
    s = mb.plan(10, slots=3, policy="hsm")
    assert not s.codes.flags.writeable
    with pytest.raises(ValueError):
        s.codes[0, 0] = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.forward_steps = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.codes = np.zeros((1, 3), np.int64)
    assert isinstance(s.actions, tuple)
    assert hash(s) == hash(mb.plan(10, slots=3, policy="hsm"))


def test_schedule_does_not_make_the_callers_array_read_only():
    # the schedule must hold its own copy, so the caller keeps a writeable array
    rows = codes_of(HSM3)
    s = mb.Schedule(T=3, policy="hand", codes=rows, hidden_quanta=1, internal_quanta=1, pool_quanta=2,
                    forward_steps=5)
    s.validate()
    rows[1, 1] = 2  # the caller edits its own array afterwards
    assert s.codes[1, 1] == 1
    s.validate()


def test_codes_cannot_be_made_writeable_again():
    s = mb.plan(10, slots=3, policy="hsm")
    with pytest.raises(ValueError):
        s.codes.flags.writeable = True


def test_codes_do_not_alias_the_callers_buffer():
    base = codes_of(HSM3)
    s = mb.Schedule(T=3, policy="hand", codes=base[:], hidden_quanta=1, internal_quanta=1, pool_quanta=2,
                    forward_steps=5)
    base[1, 1] = 2  # through a view made before the schedule existed
    assert s.codes[1, 1] == 1


# ---- JSON ------------------------------------------------------------------------
MODEL = mb.Sequence(mb.GRU(input_size=2, hidden_size=3), output_size=1, loss="mse")
_FULL_BYTES = mb.plan(30, budget=1.0, model=MODEL, batch=3, dtype="float32", policy="full").peak_bytes


@pytest.mark.parametrize("make", [
    lambda: mb.plan(10, slots=3, policy="hsm"),
    lambda: mb.plan(25, slots=7.5, alpha=3.5),
    lambda: mb.plan(25, slots=7.5, alpha=3.5, policy="ism"),
    lambda: mb.plan(1, slots=1, policy="revolve"),
    lambda: mb.plan(30, budget=0.7, model=MODEL, batch=3, policy="sqrt"),
    lambda: mb.plan(30, budget=f"{_FULL_BYTES * 3 // 4}B", model=MODEL, batch=3, dtype="float32"),
])
def test_json_round_trip(make):
    s = make()
    text = s.to_json()
    assert json.loads(text)["forward_steps"] == s.forward_steps  # plain JSON
    back = mb.Schedule.from_json(text)
    assert back == s
    assert back.forward_steps == s.forward_steps and back.T == s.T and back.policy == s.policy
    assert np.array_equal(back.codes, s.codes)
    assert back.peak_bytes == s.peak_bytes and back.peak_units == s.peak_units
    assert back.time_ratio == s.time_ratio
    assert not back.codes.flags.writeable
    assert hash(back) == hash(s)
    back.validate()


def test_json_changes_are_noticed():
    s = mb.plan(10, slots=3, policy="hsm")
    data = json.loads(s.to_json())
    data["actions"] = data["actions"][:-1]
    tampered = mb.Schedule.from_json(json.dumps(data))
    with pytest.raises(mb.ScheduleError):
        tampered.validate()


def test_comparing_an_invalid_schedule_does_not_raise():
    s = mb.plan(10, slots=3, policy="hsm")
    data = json.loads(s.to_json())
    data["actions"] = data["actions"][:-1]
    tampered = mb.Schedule.from_json(json.dumps(data))
    assert tampered != s


VALID = json.loads(mb.plan(3, slots=2, policy="hsm").to_json())


def _with(**changes):
    data = dict(VALID)
    data.update(changes)
    return json.dumps(data)


def _without(key):
    return json.dumps({k: v for k, v in VALID.items() if k != key})


GARBAGE = [
    pytest.param("not json at all", id="not json"),
    pytest.param("", id="empty"),
    pytest.param("[]", id="list"),
    pytest.param("null", id="null"),
    pytest.param("{}", id="empty object"),
    pytest.param(json.dumps({"format": "something/else", "actions": []}), id="other format"),
    pytest.param(_with(format="memopt_bptt.Schedule/0"), id="old format"),
    pytest.param(_with(actions=[["jump", 1, -1]]), id="unknown op"),
    pytest.param(_with(actions=[["advance", 1]]), id="short action"),
    pytest.param(_without("actions"), id="no actions"),
]


@pytest.mark.parametrize("text", GARBAGE + [
    pytest.param(_without("T"), id="no T"),
    pytest.param(_with(actions=5), id="actions not a list"),
    pytest.param(_with(actions=[5]), id="action not a list"),
])
def test_from_json_rejects_garbage(text):
    with pytest.raises(ValueError):
        mb.Schedule.from_json(text)


# ---- printing and the time model -------------------------------------------------
def test_str_names_policy_and_forward_steps():
    s = mb.plan(100, slots=5, policy="hsm")  # C(100, 5) = 416
    text = str(s)
    assert "hsm" in text
    assert "416" in text
    assert re.search(r"\b100\b", text)  # T
    r = repr(s)
    assert "hsm" in r and "416" in r
    m = mb.plan(40, slots=4, alpha=2.0, policy="ism")
    assert "ism" in str(m) and str(m.forward_steps) in str(m)


def test_time_ratio_by_hand():
    s = mb.plan(10, slots=3, policy="hsm")  # 25 forwards; backward = 2 forwards
    assert s.forward_steps == 25
    assert s.time_ratio == pytest.approx((25 + 10 * 2) / (10 * 3))  # 1.5
    s1 = mb.plan(10, slots=3, policy="hsm", backward_forward_ratio=1.0)
    assert s1.time_ratio == pytest.approx((25 + 10) / 20)  # 1.75
    s0 = mb.plan(10, slots=3, policy="hsm", backward_forward_ratio=0.0)
    assert s0.time_ratio == pytest.approx(2.5)  # forwards only: 25 / 10
    full = mb.plan(4, slots=7, alpha=2.0, policy="full")
    assert full.time_ratio == pytest.approx(1.0)  # no replay costs nothing extra
    hand_s = hand(HSM3, T=3, pool=2, forwards=5)  # default b/f = 2
    assert hand_s.time_ratio == pytest.approx((5 + 6) / 9)


def test_time_ratio_uses_the_cells_ratio():
    model = mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2, loss="mse")
    s = mb.plan(2, budget=1.0, model=model, batch=1, policy="hsm")  # 3 forwards (C(2, 2))
    rho = model.cell.backward_forward_ratio
    assert s.forward_steps == 3
    assert s.time_ratio == pytest.approx((3 + 2 * rho) / (2 * (1 + rho)))


def test_alpha_and_units():
    s = mb.plan(9, slots=4.5, alpha=3.5)
    assert (s.hidden_quanta, s.internal_quanta) == (2, 7)
    assert s.alpha == 3.5
    assert s.peak_units == s.pool_quanta / 2
    assert s.peak_bytes is None and s.pool_bytes is None
