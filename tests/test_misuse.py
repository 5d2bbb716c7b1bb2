"""The standing misuse suite (issue 15): what a careless or hostile user does, and what must happen.

``REFUSED`` is the table: one row per misuse (the part of issue 15 it comes
from, a name, the call, the exception it must raise and a pattern its message
must match, which names the argument and the fix). Misuses whose right answer
is more than an exception (a plan that must now succeed, a bound on memory, a
file's mode, the command line's one line and exit code, what training hands
back) are tests of their own below, each saying which case it covers. Every
case failed before its fix.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from typing import Any, Callable, NamedTuple

import numpy as np
import pytest

import memopt_bptt as mb

# small models: nothing below compiles a sweep unless it says so
GRU = mb.Sequence(mb.GRU(input_size=2, hidden_size=3), output_size=1, loss="mse")
LSTM = mb.Sequence(mb.LSTM(input_size=8, hidden_size=16), output_size=2, loss="mse")
GRU_SIZES = {"model": GRU, "batch": 3, "dtype": "float32"}
ELMAN = mb.Sequence(mb.Elman(input_size=2, hidden_size=4), output_size=1, loss="mse")  # trained below
XS, YS = mb.adding_problem(20, 3, seed=0, dtype="float32")
P0 = ELMAN.init_params(seed=0, dtype="float32")


def _json(schedule: mb.Schedule, **changes: Any) -> str:
    """The schedule's JSON with fields replaced (a user editing the file)."""
    data = json.loads(schedule.to_json())
    data.update(changes)
    return json.dumps(data)


def _json_actions(schedule: mb.Schedule, i: int, row: Any) -> str:
    data = json.loads(schedule.to_json())
    data["actions"][i] = row
    return json.dumps(data)


ABSTRACT = mb.plan(60, slots=5, alpha=3.5)
FOR_GRU = mb.plan(30, budget=0.3, **GRU_SIZES)


def _value_and_grad_with(schedule: mb.Schedule) -> Any:
    xs = np.zeros((schedule.T, 3, 2), np.float32)
    ys = np.zeros((schedule.T, 3, 1), np.float32)
    return mb.value_and_grad(GRU, GRU.init_params(seed=0, dtype="float32"), xs, ys, schedule=schedule)


class Misuse(NamedTuple):
    part: int                      # the numbered part of issue 15
    name: str
    call: Callable[[], Any]
    error: type
    match: str                     # a regex the message must contain


REFUSED = [
    # ---- 2: schedules from files are untrusted --------------------------------------------------
    Misuse(2, "from_json T as a string", lambda: mb.Schedule.from_json(_json(ABSTRACT, T="60")),
           ValueError, r"T='60' must be an int"),
    Misuse(2, "from_json T as a float", lambda: mb.Schedule.from_json(_json(ABSTRACT, T=60.0)),
           ValueError, r"T=60.0 must be an int"),
    Misuse(2, "from_json T as a bool", lambda: mb.Schedule.from_json(_json(ABSTRACT, T=True)),
           ValueError, r"T=True must be an int"),
    Misuse(2, "from_json ratio 'fast'",
           lambda: mb.Schedule.from_json(_json(ABSTRACT, backward_forward_ratio="fast")),
           ValueError, r"backward_forward_ratio='fast' must be a number"),
    Misuse(2, "from_json negative ratio", lambda: mb.Schedule.from_json(_json(ABSTRACT, backward_forward_ratio=-1)),
           ValueError, r"backward_forward_ratio=-1.0 must be a finite number >= 0"),
    Misuse(2, "from_json negative pool", lambda: mb.Schedule.from_json(_json(ABSTRACT, pool_quanta=-1)),
           ValueError, r"pool_quanta=-1 must be an int in \[1, 2\*\*62\]"),
    Misuse(2, "from_json zero hidden quanta", lambda: mb.Schedule.from_json(_json(ABSTRACT, hidden_quanta=0)),
           ValueError, r"hidden_quanta=0 must be an int in \[1"),
    Misuse(2, "from_json pool beyond int64", lambda: mb.Schedule.from_json(_json(ABSTRACT, pool_quanta=2 ** 70)),
           ValueError, r"pool_quanta=\d+ must be an int in \[1, 2\*\*62\]"),
    Misuse(2, "from_json budget as a size string", lambda: mb.Schedule.from_json(_json(FOR_GRU, budget_bytes="17KB")),
           ValueError, r"budget_bytes='17KB' must be an int"),
    Misuse(2, "from_json description not a string", lambda: mb.Schedule.from_json(_json(ABSTRACT, description=5)),
           ValueError, r"description=5 must be a str"),
    Misuse(2, "from_json unknown field", lambda: mb.Schedule.from_json(_json(ABSTRACT, pool_bytes=5)),
           ValueError, r"unknown field\(s\) 'pool_bytes'"),
    Misuse(2, "from_json step as a string", lambda: mb.Schedule.from_json(_json_actions(ABSTRACT, 1, ["advance", "3", -1])),
           ValueError, r"action 1 is \['advance', '3', -1\]"),
    Misuse(2, "from_json step as a float", lambda: mb.Schedule.from_json(_json_actions(ABSTRACT, 1, ["advance", 3.0, -1])),
           ValueError, r"action 1 is"),
    Misuse(2, "from_json summary not an object", lambda: mb.Schedule.from_json(_json(ABSTRACT, summary=[1])),
           ValueError, r"'summary' must be an object"),
    Misuse(2, "from_json of None", lambda: mb.Schedule.from_json(None),
           TypeError, r"text must be a str"),
    Misuse(2, "pool edited beyond the schedule's own byte budget (issue: +200000, 51 MB against 17 KB)",
           lambda: mb.Schedule.from_json(_json(FOR_GRU, pool_quanta=FOR_GRU.pool_quanta + 200000)).validate(),
           mb.ScheduleError, r"exceeds the schedule's budget_bytes"),
    Misuse(2, "pool and budget edited together: the pool is more than the actions use",
           lambda: mb.Schedule.from_json(_json(FOR_GRU, pool_quanta=FOR_GRU.pool_quanta + 200000,
                                               budget_bytes=10 ** 12)).validate(),
           mb.ScheduleError, r"pool_quanta=\d+ but the actions use \d+ quanta"),
    Misuse(2, "pool edited beyond the abstract budget's units",
           lambda: mb.Schedule.from_json(_json(ABSTRACT, pool_quanta=10 ** 8)).validate(),
           mb.ScheduleError, r"above the schedule's budget_units=5"),
    Misuse(2, "a byte budget without the sizes it counts",
           lambda: mb.Schedule.from_json(_json(FOR_GRU, quantum_bytes=None)).validate(),
           mb.ScheduleError, r"a byte budget needs both sizes"),
    Misuse(2, "the executor refuses an edited pool before allocating it",
           lambda: _value_and_grad_with(mb.Schedule.from_json(_json(FOR_GRU, pool_quanta=FOR_GRU.pool_quanta + 200000))),
           mb.ScheduleError, r"exceeds the schedule's budget_bytes"),
    # ---- 4: huge T in the planner --------------------------------------------------------------
    Misuse(4, "T = 10^11 is refused up front with the bytes it needs",
           lambda: mb.plan(10 ** 11, slots=10, policy="revolve"),
           MemoryError, r"plan: T=100000000000 needs up to [0-9.]+ [KMGT]iB \(\d+ bytes; the schedule\) to plan, "
                        r"but this process can get"),
    Misuse(4, "a table of 10^10 rows for T = 10 is refused up front",
           lambda: mb.plan(10, slots=1e10, alpha=1e9), MemoryError, r"plan: T=10 needs up to .*lower-bound table"),
    # ---- 6: training survives divergence -------------------------------------------------------
    Misuse(6, "unknown on_nonfinite",
           lambda: mb.train(ELMAN, P0, (XS, YS), optimizer=mb.SGD(0.1), steps=1, on_nonfinite="ignore"),
           ValueError, r"train: on_nonfinite='ignore' must be one of 'raise', 'stop', 'skip'"),
    # ---- 8: small ones ------------------------------------------------------------------------
    Misuse(8, "negative b/f", lambda: mb.plan(10, slots=3, alpha=3.5, backward_forward_ratio=-1),
           ValueError, r"plan: backward_forward_ratio=-1 must be a finite number >= 0"),
    Misuse(8, "NaN b/f", lambda: mb.plan(10, slots=3, alpha=3.5, backward_forward_ratio=float("nan")),
           ValueError, r"plan: backward_forward_ratio=nan must be a finite number >= 0"),
    Misuse(8, "infinite b/f with a model",
           lambda: mb.plan(10, budget=0.5, backward_forward_ratio=float("inf"), **GRU_SIZES),
           ValueError, r"plan: backward_forward_ratio=inf must be a finite number"),
    Misuse(8, "b/f as a string", lambda: mb.plan(10, slots=3, alpha=3.5, backward_forward_ratio="2"),
           TypeError, r"plan: backward_forward_ratio='2' must be a number"),
    Misuse(8, "negative byte cost", lambda: mb.plan(10, budget=0.5, byte_cost=-1e-6, **GRU_SIZES),
           ValueError, r"plan: byte_cost=-1e-06 must be a finite number >= 0"),
    Misuse(8, "alpha that rounds to zero", lambda: mb.plan(10, slots=3, alpha=1e-9),
           ValueError, r"alpha=1e-09 rounds to 0 .* give alpha >= 1/64"),
    Misuse(8, "budget string '1.5' (a fraction above one)", lambda: mb.plan(10, budget="1.5", **GRU_SIZES),
           ValueError, r"budget='1.5': a bare number with a dot is a fraction"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[f"{c.part}: {c.name}" for c in REFUSED])
def test_refused(case):
    with pytest.raises(case.error, match=case.match) as info:
        case.call()
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)


# ---- 2: validation's memory is O(actions), whatever the sizes claim ----------------------------
def _traced_peak(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        try:
            fn()
        except mb.ScheduleError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_validating_an_absurd_pool_costs_o_actions():
    """pool_quanta = 10^7 with a budget that allows it: the old simulator built a
    list of 10^7 owners (80 MB) before finding the pool too large."""
    text = _json(ABSTRACT, pool_quanta=10 ** 7, budget_units=1e8)
    s = mb.Schedule.from_json(text)
    peak = _traced_peak(s.validate)
    with pytest.raises(mb.ScheduleError, match=r"pool_quanta=10000000 but the actions use 10 quanta"):
        s.validate()
    assert peak < 2 ** 20, peak


def test_validating_huge_state_sizes_costs_o_actions():
    """A one-step schedule whose states are 10^12 quanta each is valid; checking it
    must not touch a quantum at a time (the old simulator looped over 10^12)."""
    q = 10 ** 12
    codes = np.array([[mb.Op.TAKESHOT, 0, 0], [mb.Op.KEEP, 1, -1], [mb.Op.REVERSE, 1, -1]], np.int64)
    s = mb.Schedule(T=1, policy="hand", codes=codes, hidden_quanta=q, internal_quanta=q, pool_quanta=q,
                    forward_steps=1)
    assert _traced_peak(s.validate) < 2 ** 16
    assert s.validate().n_hidden_slots == 1


def test_a_huge_T_with_few_actions_is_refused_before_o_T_memory():
    codes = np.array([[mb.Op.TAKESHOT, 0, 0], [mb.Op.KEEP, 1, -1], [mb.Op.REVERSE, 1, -1]], np.int64)
    s = mb.Schedule(T=10 ** 12, policy="hand", codes=codes, hidden_quanta=1, internal_quanta=1, pool_quanta=1,
                    forward_steps=1)
    peak = _traced_peak(s.validate)
    with pytest.raises(mb.ScheduleError, match=r"has 3 actions, too few to reverse T=1000000000000 steps"):
        s.validate()
    assert peak < 2 ** 16


def test_every_planned_schedule_still_validates_and_round_trips():
    """The stricter checks refuse no schedule the planner makes (pool = what the actions use,
    within the budget), and the JSON written in chunks is json.dumps' text exactly."""
    for s in (ABSTRACT, FOR_GRU, mb.plan(50, budget=0.3, policy="sqrt", **GRU_SIZES),
              mb.plan(50, budget=1.0, policy="full", **GRU_SIZES), mb.plan(40, slots=4, policy="revolve"),
              mb.plan(40, slots=6.5, alpha=3.5, policy="ism")):
        s.validate()
        assert s.to_json() == json.dumps(s.to_dict())
        assert mb.Schedule.from_json(s.to_json()) == s


# ---- 4: huge T and absurd sizes in the planner ----------------------------------------------------
def test_alpha_1e9_plans_as_hsm():
    """plan(10, slots=3, alpha=1e9) died with MemoryError inside Numba (a table of 10^9 rows).
    No internal state fits, so MSM is HSM: C(10, 3) = 25 (Gruslys et al.'s checked value)."""
    s = mb.plan(10, slots=3, alpha=1e9).validate()
    assert s.forward_steps == 25 == mb.hsm_cost(10, 3)
    assert s.n_internal_slots == 0


def test_slots_beyond_int64_plan_as_enough_slots():
    """slots=1e30 raised OverflowError from Numba; more slots than steps is the 2T-1 optimum."""
    for policy in ("revolve", "hsm", "msm"):
        s = mb.plan(10, slots=1e30, policy=policy, alpha=1.0).validate()
        assert s.forward_steps == 2 * 10 - 1 if policy != "msm" else s.forward_steps == 10
        enough = mb.plan(10, slots=10, policy=policy, alpha=1.0)
        assert np.array_equal(s.codes, enough.codes) and s.pool_quanta == enough.pool_quanta


def test_a_small_machine_refuses_what_it_cannot_hold(monkeypatch):
    """With 1 MB available, T = 10^4 (emitting needs 456 bytes per step) is refused up front,
    naming at least what emitting needs; T = 100 still plans."""
    import memopt_bptt._planner._choose as planner  # plan_quanta reads its settings here
    from memopt_bptt._planner._emit import EMIT_BYTES_PER_STEP

    monkeypatch.setattr(planner, "available_bytes", lambda: 10 ** 6)
    for policy in ("msm", "revolve", "ism", "hsm", "sqrt", "full"):
        with pytest.raises(MemoryError) as info:
            mb.plan(10 ** 4, budget=1.0 if policy == "full" else 0.2, policy=policy, **GRU_SIZES)
        need = int(re.search(r"\((\d+) bytes", str(info.value)).group(1))
        assert need >= EMIT_BYTES_PER_STEP * 10 ** 4
        assert "1000000 bytes" not in str(info.value) and "976.56 KiB" in str(info.value)
    mb.plan(100, budget=0.2, **GRU_SIZES).validate()


def test_an_msm_table_whose_splits_outgrow_the_memory_left_is_refused(monkeypatch):
    """The MSM table keeps its splits as runs, whose count is known only as they are made: with
    room for the table's rows and the schedule but not the runs, planning stops with a MemoryError
    saying so (the table's rows were allowed); with enough room the same plan succeeds."""
    import memopt_bptt._planner._choose as planner  # plan_quanta reads its settings here
    from memopt_bptt._planner._emit import emit_bytes

    model = mb.Sequence([mb.LSTM(8, 32)], output_size=4)
    T = 3000
    rows = 16 * (2 * 8 + 6) * (T + 1) + 4 * (T + 1) + 32 * 400  # _msm_buffers, a row of splits, offsets
    monkeypatch.setattr(planner, "available_bytes", lambda: emit_bytes(T) + rows + 20_000)
    with pytest.raises(MemoryError, match=r"needs more than .*the MSM table's splits and the schedule"):
        mb.plan(T, budget=0.02, model=model, batch=4, dtype="float32")
    monkeypatch.setattr(planner, "available_bytes", lambda: emit_bytes(T) + rows + 10 ** 7)
    s = mb.plan(T, budget=0.02, model=model, batch=4, dtype="float32", policy="msm")
    assert s.validate() is s and s.forward_steps < plan_forwards(T, model, "ism")


def plan_forwards(T, model, policy):
    return mb.plan(T, budget=0.02, model=model, batch=4, dtype="float32", policy=policy).forward_steps


def test_rows_per_step_stay_under_the_emit_bound():
    """EMIT_BYTES_PER_STEP assumes fewer than 6T + 1 rows; the densest schedules come close to 5T."""
    from memopt_bptt._planner._emit import MAX_ACTIONS_PER_STEP
    for T in (1, 2, 7, 50, 400):
        for policy, kw in (("revolve", {"slots": 1e9}), ("revolve", {"slots": 3}), ("msm", {"slots": 8, "alpha": 3.5}),
                           ("ism", {"slots": 40, "alpha": 2}), ("full", {"slots": 1e9, "alpha": 3.5}),
                           ("sqrt", {"slots": 1e9, "alpha": 3.5}), ("msm", {"slots": 5, "alpha": 0.5})):
            s = mb.plan(T, policy=policy, **kw)
            assert len(s.codes) < MAX_ACTIONS_PER_STEP * T + 1, (T, policy, kw)


# ---- 4: the command line streams, refuses and never shows a traceback --------------------------------
def test_cli_huge_steps_is_one_line_and_exit_2():
    """--steps 1000000000 died with MemoryError from inside Numba, a traceback on the terminal."""
    proc = subprocess.run([sys.executable, "-m", "memopt_bptt", "plan", "--steps", "1000000000", "--budget", "5%"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert re.match(r"memopt-bptt plan: error: plan: T=1000000000 needs up to [0-9.]+ GiB \(\d+ bytes", proc.stderr)


def test_cli_internal_error_is_one_line_and_exit_1(capsys, monkeypatch):
    """Whatever goes wrong inside, a user sees one line naming it, not a traceback."""
    from memopt_bptt.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(mb, "plan", broken)
    assert main(["plan", "--steps", "10", "--slots", "3", "--policy", "hsm"]) == 1
    err = capsys.readouterr().err
    assert err == ("memopt-bptt plan: internal error: RuntimeError: something broke (please report it; "
                   "MEMOPT_BPTT_TRACEBACK=1 shows where)\n")


def test_cli_prints_a_long_plan_without_building_every_action(capsys, monkeypatch):
    """plan --steps 1000000 built 4 million Actions (1.6 GB) to show 55: text, json and
    actions output now come from the codes, a chunk at a time. Schedule.actions is made to
    fail here; the printed actions are checked against the codes (the independent oracle)."""
    from memopt_bptt.cli import main

    def no_actions(self):
        raise AssertionError("Schedule.actions built every Action")

    monkeypatch.setattr(mb.Schedule, "actions", property(no_actions))
    args = ["plan", "--steps", "3000", "--slots", "20", "--alpha", "3.5"]
    s = mb.plan(3000, slots=20, alpha=3.5)
    assert main(args) == 0
    text = capsys.readouterr().out
    first = " ".join(str(mb.Action(mb.OPS[op], st, sl)) for op, st, sl in s.codes[:3].tolist())
    assert f"actions ({len(s.codes)}) {first}" in " ".join(text.split())
    assert f"({len(s.codes) - 55} more; --format actions lists all)" in " ".join(text.split())
    assert str(s) and str(len(s.codes) - 40) in str(s)  # Schedule.__str__ shows 40 without building the rest
    assert main(args + ["--format", "actions"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert rows == [[mb.OPS[op], str(st), str(sl)] for op, st, sl in s.codes.tolist()]
    assert main(args + ["--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(s.to_dict()))


@pytest.mark.slow
def test_cli_plan_of_a_million_steps_fits_in_memory():
    """The issue's case: --steps 1000000 took 27 s and 1.6 GB; the schedule's codes are
    48 MB and its simulation O(T) bytes, so 1 GB of peak RSS is a generous bound."""
    code = ("import resource, sys; from memopt_bptt.cli import main; "
            "rc = main(['plan', '--steps', '1000000', '--budget', '5%']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "actions (2004134)" in proc.stdout.replace("\n", " ")
    assert int(proc.stderr.split()[-1]) < 2 ** 20  # KiB


# ---- 8: small ones -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0.05", ".5", "1.0", "1.", "4096", "64MiB", "5%", "2.5e6"])
def test_a_budget_string_means_the_same_in_the_api_and_the_cli(text):
    """budget="0.05" was 0 bytes (refused) in the API and 5% on the command line."""
    from memopt_bptt.cli import parse_cli_budget
    kind, value = mb.parse_budget(text)
    cli = parse_cli_budget(text)
    assert (kind, value) == (("fraction", cli) if isinstance(cli, float) else ("bytes", cli))
    if text == "0.05":
        assert kind == "fraction" and value == 0.05
        assert mb.plan(300, budget="0.05", model=LSTM, batch=4) == mb.plan(300, budget=0.05, model=LSTM, batch=4)


@pytest.mark.parametrize("text", ["1.5", "0.0", "5 parsecs", "101%", "0"])
def test_a_bad_budget_string_gets_the_same_message_in_the_api_and_the_cli(text):
    from memopt_bptt.cli import parse_cli_budget
    with pytest.raises(ValueError) as api:
        mb.parse_budget(text)
    with pytest.raises(ValueError) as cli:
        parse_cli_budget(text)
    assert str(api.value) == str(cli.value)


@pytest.mark.parametrize("policy", ["full", "sqrt"])
def test_least_budget_message_adds_up(policy):
    """'39328 bytes (working buffers 7584 + initial state 512)' did not add up: for full and
    sqrt the least budget holds their checkpoints, and the message now says so. The least
    plans and peaks at exactly that (policy full: plain BPTT's bytes); one byte less does not plan."""
    with pytest.raises(mb.MemoryBudgetError) as info:
        mb.plan(100, budget="1KiB", policy=policy, model=LSTM, batch=4)
    m = re.search(r": (\d+) bytes \(working buffers (\d+) \+ the checkpoints policy='\w+' keeps (\d+)\)",
                  str(info.value))
    assert m, str(info.value)
    least, working, pool = map(int, m.groups())
    assert least == working + pool == info.value.least_bytes
    s = mb.plan(100, budget=least, policy=policy, model=LSTM, batch=4)
    assert s.peak_bytes == least and s.working_bytes == working
    with pytest.raises(mb.MemoryBudgetError):
        mb.plan(100, budget=least - 1, policy=policy, model=LSTM, batch=4)


# ---- 6: training survives divergence ---------------------------------------------------------------
def _manual(params, batches, optimizer):
    """The oracle: optimizer updates one batch at a time, stopping at the first whose loss
    value_and_grad refuses; (params, state, losses) of the updates before it."""
    state = optimizer.init(params)
    losses = []
    for xs, ys in batches:
        try:
            loss, grads = mb.value_and_grad(ELMAN, params, xs, ys)
        except FloatingPointError:
            break
        params, state = optimizer.update(params, grads, state)
        losses.append(loss)
    return params, state, losses


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_divergence_raises_with_the_last_good_params_state_and_history():
    """mb.train(..., optimizer=mb.SGD(1e6)) raised at the first non-finite loss and lost the good
    updates and the history. Now the error carries them, equal to a manual loop's."""
    opt = mb.SGD(1e6, momentum=0.5)
    with pytest.raises(mb.DivergenceError, match=r"train: the loss is not finite at update 3 \(batch 3\); "
                                                          r"the 3 good updates are kept") as info:
        mb.train(ELMAN, P0, (XS, YS), optimizer=opt, steps=50, progress=False)
    exc = info.value
    assert isinstance(exc, FloatingPointError)
    params, state, losses = _manual(P0, [(XS, YS)] * 50, opt)
    assert len(losses) == 3 and exc.history["loss"] == losses
    assert _same(exc.params, params) and _same(exc.opt_state.velocity, state.velocity)
    assert exc.history["updates"] == 3 and exc.history["batches"] == 3
    assert exc.history["nonfinite"] == [{"update": 3, "batch": 3, "what": "loss"}]
    assert exc.history["schedule"] is not None and exc.history["stopped"] is None


def test_divergence_stop_returns_the_last_good_update():
    params, history = mb.train(ELMAN, P0, (XS, YS), optimizer=mb.SGD(1e6), steps=50, progress=False,
                               on_nonfinite="stop")
    good, _, losses = _manual(P0, [(XS, YS)] * 50, mb.SGD(1e6))
    assert _same(params, good) and history["loss"] == losses and history["updates"] == 3
    assert history["stopped"].startswith("train: the loss is not finite at update 3 (batch 3)")


def test_divergence_skip_leaves_out_the_bad_batch_only():
    """A batch whose targets overflow float32's square (1e30) is skipped; the others are applied,
    as a manual loop over the good batches applies them."""
    bad = (XS, np.full_like(YS, 1e30))
    batches = [(XS, YS), (XS, YS * 2), bad, (XS, YS * 3)]
    params, history = mb.train(ELMAN, P0, batches, optimizer=mb.SGD(0.1), epochs=1, progress=False,
                               on_nonfinite="skip")
    good, _, losses = _manual(P0, [b for b in batches if b is not bad], mb.SGD(0.1))
    assert _same(params, good) and history["loss"] == losses
    assert history["nonfinite"] == [{"update": 2, "batch": 2, "what": "loss"}] and history["batch"] == [0, 1, 3]


def test_an_update_that_makes_a_parameter_infinite_is_not_applied():
    """Adam(1e39) on float32 parameters overflows them on the first update: refused, the caller's
    parameters come back unchanged."""
    params, history = mb.train(ELMAN, P0, (XS, YS), optimizer=mb.Adam(1e39), steps=3, progress=False,
                               on_nonfinite="stop")
    assert _same(params, P0) and history["updates"] == 0
    assert history["nonfinite"] == [{"update": 0, "batch": 0, "what": "parameters"}]


# ---- 7: files ---------------------------------------------------------------------------------------
PARAMS = {"a": np.arange(6.0).reshape(2, 3), "b": np.ones(2, np.float32)}


def test_save_params_keeps_a_replaced_files_mode(tmp_path):
    """The replaced file became 0600 (mkstemp's mode)."""
    path = tmp_path / "p.npz"
    path.write_bytes(b"")
    path.chmod(0o640)
    mb.save_params(path, PARAMS)
    assert path.stat().st_mode & 0o7777 == 0o640
    assert mb.load_params(path).keys() == PARAMS.keys()


@pytest.mark.parametrize("umask", [pytest.param(0o022, id="umask 022"), pytest.param(0o077, id="umask 077")])
def test_save_params_gives_a_new_file_the_umasks_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        mb.save_params(tmp_path / "new.npz", PARAMS)
    finally:
        os.umask(old)
    assert (tmp_path / "new.npz").stat().st_mode & 0o7777 == 0o666 & ~umask


@pytest.mark.parametrize("where", ["no/such/folder/p.npz", "dir.npz"])
def test_save_params_errors_name_the_callers_path(tmp_path, where):
    """The error named the temporary file ('.tmp-abc123.npz'), not the path the caller gave."""
    (tmp_path / "dir.npz").mkdir()
    path = str(tmp_path / where)
    with pytest.raises(OSError) as info:
        mb.save_params(path, PARAMS)
    assert f"save_params: cannot write {path!r}" in str(info.value)
    assert "tmp" not in str(info.value).replace(str(tmp_path), "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.npz"]  # nothing left behind


def _bad_files(tmp_path):
    good = tmp_path / "good.npz"
    mb.save_params(good, PARAMS)
    data = good.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    np.save(tmp_path / "one.npy", np.arange(3.0))
    np.savez(tmp_path / "objects.npz", o=np.array([{}], dtype=object))
    files = {"one.npy": None, "truncated.npz": data[: len(data) // 2], "corrupted.npz": bytes(flipped),
             "text.npz": b"not an archive", "empty.npz": b"", "objects.npz": None}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    return files


@pytest.mark.parametrize("name,what", [
    ("one.npy", r"is a single array \(.npy\), not an .npz archive of named arrays"),
    ("truncated.npz", r"is truncated or corrupted.*BadZipFile"),
    ("corrupted.npz", r"is truncated or corrupted.*Bad CRC-32"),
    ("text.npz", r"is not an .npz archive"),
    ("empty.npz", r"is not an .npz archive"),
    ("objects.npz", r"is truncated or corrupted, or holds something other than numeric arrays.*Object arrays"),
])
def test_load_params_of_a_bad_file_is_one_clear_error(tmp_path, name, what):
    """A .npy gave TypeError about context managers, a truncated or corrupted file zipfile's
    BadZipFile, a text file numpy's advice to unpickle it."""
    _bad_files(tmp_path)
    path = str(tmp_path / name)
    with pytest.raises(ValueError, match=f"^load_params: {re.escape(repr(path))} {what}"):
        mb.load_params(path)


def test_a_killed_save_leaves_nothing_behind_after_the_next(tmp_path):
    """A save killed (SIGKILL) while writing left its temporary file for good; the next save of the
    same name removes it. A temporary file of a process still running is left alone."""
    path = tmp_path / "p.npz"
    mb.save_params(path, PARAMS)
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, numpy as np, memopt_bptt as mb\n"
        "def slow(fh, **arrays):\n"
        "    fh.write(b'PK partial'); fh.flush(); print('writing', flush=True); time.sleep(120)\n"
        "np.savez = slow\n"
        f"mb.save_params({str(path)!r}, {{'a': np.zeros(3)}})\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    stale = [p.name for p in tmp_path.iterdir() if p.name != "p.npz"]
    assert len(stale) == 1 and stale[0].endswith(".memopt-tmp"), stale
    alive = tmp_path / f".p.npz.{os.getppid()}.0123abcd.memopt-tmp"  # our parent: running
    alive.write_bytes(b"")
    other = tmp_path / ".q.npz.999999999.0123abcd.memopt-tmp"      # another file's: not this save's
    other.write_bytes(b"")
    mb.save_params(path, PARAMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["p.npz", alive.name, other.name])
    assert mb.load_params(path).keys() == PARAMS.keys()


@pytest.mark.parametrize("cell,dtype,batch", [(mb.LSTM(input_size=8, hidden_size=16), "float32", 4),
                                              (mb.GRU(input_size=8, hidden_size=16), "float64", 3)])
def test_single_lane_buffers_at_the_least_budget_are_charged_exactly(cell, dtype, batch):
    """Buffers a model does not use (an input copy, deferred gradients, an embedding's dL/dx)
    were allocated as one-element stand-ins, beyond the budget by an element each (12 to 64
    bytes at the least budget); now every byte allocated is one the planner charged, and the
    gradients are still plain BPTT's bits."""
    from memopt_bptt.testing import least_budget
    model = mb.Sequence(cell, output_size=2, lanes=1)
    least = least_budget(model, T=30, batch=batch, policy="msm", dtype=dtype)
    s = mb.plan(30, budget=least, model=model, batch=batch, dtype=dtype)
    xs = np.random.default_rng(0).standard_normal((30, batch, 8)).astype(dtype)
    ys = np.random.default_rng(1).standard_normal((30, batch, 2)).astype(dtype)
    params = model.init_params(seed=0, dtype=dtype)
    loss, grads, report = mb.value_and_grad(model, params, xs, ys, schedule=s, return_report=True)
    assert report.allocated_bytes == s.peak_bytes == s.budget_bytes == least
    plain_loss, plain_grads = mb.value_and_grad(model, params, xs, ys)
    assert loss == plain_loss and _same(grads, plain_grads)
