"""The memopt-bptt command line, run as users run it: the installed console script.

Every case is a subprocess of the installed ``memopt-bptt`` script (or
``python -m memopt_bptt`` when the script is not on PATH). The subprocesses
are started together by a module fixture, a few at a time, so the file costs
about as long as its slowest command (the demo, which compiles the Numba sweep
once). Outputs are checked against independent oracles: the closed form of
Gruslys et al.'s C(t, m), a re-simulation of the printed actions, mb.plan in
this process, and the budget boundary (the least budget printed works, one
byte less does not).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import memopt_bptt as mb
from memopt_bptt.cli import parse_cli_budget

SCRIPT = shutil.which("memopt-bptt")
COMMAND = [SCRIPT] if SCRIPT else [sys.executable, "-m", "memopt_bptt"]
MODULE = [sys.executable, "-m", "memopt_bptt"]

# the CLI's documented default model: LSTM, input 64, hidden 256, output 4, batch 16, float32
DEFAULT_MODEL = mb.Sequence(mb.LSTM(input_size=64, hidden_size=256), output_size=4, loss="mse")
DEFAULT_SIZES = {"model": DEFAULT_MODEL, "batch": 16, "dtype": "float32"}

# (name, arguments, the option the one-line error must name): run through the installed script
BAD = [
    ("unknown command", ["frob"], "frob"),
    ("unknown option", ["plan", "--steps", "10", "--budget", "50%", "--frob"], "--frob"),
    ("unknown cell", ["plan", "--steps", "10", "--budget", "50%", "--cell", "lstmx"], "--cell"),
    ("unknown policy", ["plan", "--steps", "10", "--budget", "50%", "--policy", "best"], "--policy"),
    ("non-numeric steps", ["plan", "--steps", "ten", "--budget", "50%"], "--steps"),
    ("negative steps", ["plan", "--steps", "-3", "--budget", "50%"], "--steps"),
    ("zero steps", ["plan", "--steps", "0", "--budget", "50%"], "--steps"),
    ("budget in parsecs", ["plan", "--steps", "10", "--budget", "5 parsecs"], "--budget"),
    ("negative budget", ["plan", "--steps", "10", "--budget", "-3MiB"], "--budget"),
    ("zero budget", ["plan", "--steps", "10", "--budget", "0"], "--budget"),
    ("budget below the least", ["plan", "--steps", "100", "--budget", "1KiB"], "--budget"),
    ("bad budget list", ["compare", "--steps", "10", "--budgets", "5%,x"], "--budgets"),
]

# more bad input, through main() in this process (the same code path, without a process each)
BAD_IN_PROCESS = [
    ("missing steps", ["plan", "--budget", "50%"], "--steps"),
    ("fraction above one", ["plan", "--steps", "10", "--budget", "1.5"], "--budget"),
    ("negative fraction", ["plan", "--steps", "10", "--budget", "-0.5"], "--budget"),
    ("missing budget", ["plan", "--steps", "10"], "--budget"),
    ("fixed policy too big", ["plan", "--steps", "100", "--budget", "10%", "--policy", "full"], "--budget"),
    ("slots below one", ["plan", "--steps", "10", "--slots", "0.5", "--policy", "hsm"], "--slots"),
    ("msm without alpha", ["plan", "--steps", "10", "--slots", "3"], "--alpha"),
    ("slots and budget", ["plan", "--steps", "10", "--slots", "3", "--alpha", "2", "--budget", "5%"], "--slots"),
    ("cell with slots", ["plan", "--steps", "10", "--slots", "3", "--policy", "hsm", "--hidden", "8"], "--hidden"),
    ("measure with slots", ["plan", "--steps", "10", "--slots", "3", "--policy", "hsm", "--measure"], "--measure"),
    ("bytes in the abstract model", ["plan", "--steps", "10", "--alpha", "2", "--budget", "4096"], "--budget"),
    ("negative alpha", ["plan", "--steps", "10", "--alpha", "-1", "--budget", "5%"], "--alpha"),
    ("unknown format", ["plan", "--steps", "10", "--budget", "50%", "--format", "xml"], "--format"),
    ("unknown dtype", ["plan", "--steps", "10", "--budget", "50%", "--dtype", "float16"], "--dtype"),
    ("unknown policy in list", ["compare", "--steps", "10", "--policies", "msm,foo"], "--policies"),
    ("empty budget in list", ["compare", "--steps", "10", "--budgets", "5%,,1%"], "--budgets"),
    ("bytes in abstract compare", ["compare", "--steps", "10", "--alpha", "2", "--budgets", "4096"], "--budgets"),
    ("zero hidden", ["compare", "--steps", "10", "--hidden", "0"], "--hidden"),
    ("jordan stacked", ["plan", "--steps", "10", "--budget", "50%", "--cell", "jordan", "--layers", "2"], "--cell"),
    ("zero layers", ["plan", "--steps", "10", "--budget", "50%", "--layers", "0"], "--layers"),
    ("negative vocab", ["plan", "--steps", "10", "--budget", "50%", "--vocab", "-1"], "--vocab"),
    ("demo budget below the least", ["demo", "--steps", "20", "--budget", "1KiB"], "--budget"),
    ("demo zero updates", ["demo", "--updates", "0"], "--updates"),
    ("demo negative seed", ["demo", "--seed", "-1"], "--seed"),
    ("unwritable plot", ["plan", "--steps", "10", "--slots", "3", "--policy", "hsm", "--plot",
                         "no/such/dir/x.png"], "--plot"),
]

DEMO = ["demo"]   # the defaults, as README's first command runs it


def _good_cases(tmp) -> dict[str, list[str]]:
    return {
        "demo": DEMO,   # first: the slowest (Numba compiles the sweep in the subprocess)
        "hsm text": ["plan", "--steps", "10", "--slots", "3", "--policy", "hsm"],
        "hsm json": ["plan", "--steps", "10", "--slots", "3", "--policy", "hsm", "--format", "json"],
        "msm json": ["plan", "--steps", "60", "--budget", "10%", "--format", "json"],
        "msm actions": ["plan", "--steps", "60", "--budget", "0.1", "--format", "actions"],
        "msm text": ["plan", "--steps", "60", "--budget", "0.1"],
        "measured json": ["plan", "--steps", "60", "--budget", "0.1", "--hidden", "8", "--batch", "2",
                          "--measure", "--format", "json"],
        "plan plot": ["plan", "--steps", "30", "--budget", "20%", "--plot", str(tmp / "schedule.png")],
        "compare json": ["compare", "--steps", "60", "--budgets", "3%,10%,50%,80MiB", "--format", "json"],
        "compare text": ["compare", "--steps", "60", "--budgets", "3%,10%", "--plot", str(tmp / "costs.png")],
        "help": ["--help"],
        "plan help": ["plan", "--help"],
        "compare help": ["compare", "--help"],
        "demo help": ["demo", "--help"],
        "version": ["--version"],
    }


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every command of this module, run concurrently (4 at a time): name -> CompletedProcess."""
    tmp = tmp_path_factory.mktemp("cli")
    jobs = {("good", k): COMMAND + v for k, v in _good_cases(tmp).items()}
    jobs.update({("bad", name): COMMAND + args for name, args, _ in BAD})
    jobs[("module", "msm text")] = MODULE + _good_cases(tmp)["msm text"]
    jobs[("module", "bad")] = MODULE + ["plan", "--steps", "0", "--budget", "5%"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(_run, argv) for key, argv in jobs.items()}
        out = {key: f.result() for key, f in futures.items()}
    out["tmp"] = tmp
    return out


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


# ---- bad input: one line, exit code 2 ------------------------------------------------
@pytest.mark.parametrize("name,args,option", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_naming_the_option(runs, name, args, option):
    proc = runs[("bad", name)]
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert option in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("name,args,option", BAD_IN_PROCESS, ids=[b[0] for b in BAD_IN_PROCESS])
def test_more_bad_input_in_process(capsys, name, args, option):
    from memopt_bptt.cli import main
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and option in captured.err
    assert captured.err.startswith("memopt-bptt")


def test_least_budget_printed_is_the_boundary(runs):
    """The least budget the error names plans; one byte less does not (checked in this process)."""
    line = runs[("bad", "budget below the least")].stderr
    least = int(re.search(r"use --budget (\d+)", line).group(1))
    s = mb.plan(100, budget=least, policy="msm", **DEFAULT_SIZES).validate()
    assert s.peak_bytes <= least
    with pytest.raises(mb.MemoryBudgetError):
        mb.plan(100, budget=least - 1, policy="msm", **DEFAULT_SIZES)


def test_fixed_policy_error_names_what_it_needs(capsys):
    from memopt_bptt.cli import main
    full = mb.plan(100, budget=1.0, policy="full", **DEFAULT_SIZES)
    for budget in ("10%", "1%"):  # 1%: below even the initial state and working buffers
        assert main(["plan", "--steps", "100", "--budget", budget, "--policy", "full"]) == 2
        line = capsys.readouterr().err
        least = int(re.search(r"use --budget (\d+)", line).group(1))
        assert least == full.peak_bytes  # policy full needs exactly plain BPTT's bytes


# ---- plan ----------------------------------------------------------------------------
def _closed_form_C(t: int, m: int) -> int:
    """Gruslys et al.'s C(t, m) by its recurrence (memoised), independent of the library."""
    table = {}
    for tt in range(0, t + 1):
        for mm in range(1, m + 1):
            if tt <= 1:
                table[tt, mm] = tt
            elif mm == 1:
                table[tt, mm] = tt * (tt + 1) // 2
            else:
                table[tt, mm] = min(y + table[tt - y, mm - 1] + table[y, mm] for y in range(1, tt))
    return table[t, m]


def test_plan_text_hsm_matches_the_closed_form_and_draws_the_timeline(runs):
    out = _ok(runs[("good", "hsm text")])
    assert _closed_form_C(10, 3) == 25
    assert re.search(r"forward steps\s+25\b", out)
    assert re.search(r"policy\s+hsm", out)
    for word in ("time ratio", "hidden kept at", "internal kept at", "actions (", "takeshot", "reverse"):
        assert word in out
    rows = [ln for ln in out.splitlines() if re.match(r"\s+\d+ \|", ln)]
    assert [int(r.split("|")[0]) for r in rows] == list(range(10, 0, -1))
    grid = "".join(r.split("|")[1] for r in rows)
    assert grid.count("B") == 10            # every step reversed once
    assert grid.count("F") == 10            # every step first computed once
    assert grid.count("F") + grid.count("r") == 25
    for r in rows:                          # step t: first forward before its replays before its backward
        cells = r.split("|")[1]
        assert cells.index("F") < cells.index("B")
        assert "r" not in cells[cells.index("B"):]


def test_plan_json_round_trips_and_equals_mb_plan(runs):
    s = mb.Schedule.from_json(_ok(runs[("good", "hsm json")])).validate()
    assert s.forward_steps == _closed_form_C(10, 3) == mb.plan(10, slots=3, policy="hsm").forward_steps

    s = mb.Schedule.from_json(_ok(runs[("good", "msm json")])).validate()
    ref = mb.plan(60, budget=0.1, **DEFAULT_SIZES)
    assert s == ref and s.forward_steps == ref.forward_steps
    full = mb.plan(60, budget=1.0, policy="full", **DEFAULT_SIZES)
    assert s.peak_bytes <= 0.1 * full.peak_bytes



def _main_out(capsys, args: list[str]) -> str:
    from memopt_bptt.cli import main
    assert main(args) == 0
    return capsys.readouterr().out


def test_plan_json_other_cells_and_the_abstract_model(capsys):
    model = mb.Sequence(mb.GRU(input_size=8, hidden_size=32), output_size=2)
    out = _main_out(capsys, ["plan", "--steps", "50", "--budget", "200KiB", "--cell", "gru", "--hidden", "32",
                             "--input", "8", "--output", "2", "--batch", "4", "--dtype", "float64",
                             "--format", "json"])
    s = mb.Schedule.from_json(out).validate()
    ref = mb.plan(50, budget=200 * 1024, model=model, batch=4, dtype="float64")
    assert s == ref and s.peak_bytes <= 200 * 1024

    out = _main_out(capsys, ["plan", "--steps", "40", "--alpha", "3.5", "--budget", "0.1", "--format", "json"])
    assert mb.Schedule.from_json(out).validate() == mb.plan(40, budget=0.1, alpha=3.5)

    model = mb.Sequence(mb.Jordan(input_size=3, hidden_size=16), output_size=5)
    out = _main_out(capsys, ["plan", "--steps", "30", "--budget", "0.3", "--cell", "jordan", "--input", "3",
                             "--hidden", "16", "--output", "5", "--batch", "2", "--policy", "ism",
                             "--format", "json"])
    assert mb.Schedule.from_json(out) == mb.plan(30, budget=0.3, model=model, batch=2, dtype="float32",
                                                 policy="ism")


def test_plan_layers_and_vocab_plan_the_stacked_model(capsys):
    """--layers and --vocab describe mb.Sequence([mb.Embedding(V, I), cell(I, H), cell(H, H), ...])."""
    model = mb.Sequence([mb.Embedding(65, 16), mb.GRU(16, 32), mb.GRU(32, 32), mb.GRU(32, 32)], output_size=4,
                        loss="cross_entropy")
    out = _main_out(capsys, ["plan", "--steps", "200", "--budget", "5%", "--cell", "gru", "--layers", "3",
                             "--vocab", "65", "--input", "16", "--hidden", "32", "--batch", "8", "--format", "json"])
    s = mb.Schedule.from_json(out).validate()
    ref = mb.plan(200, budget=0.05, model=model, batch=8, dtype="float32")
    assert s == ref and s.forward_steps == ref.forward_steps
    assert (s.hidden_quanta, s.internal_quanta) == (1, 5)  # three GRU layers: 3H state, 15H internal
    text = _main_out(capsys, ["plan", "--steps", "200", "--budget", "5%", "--layers", "2", "--hidden", "32"])
    assert "lstm(in=64, hidden=32) > lstm(in=32, hidden=32) > readout(out=4)" in text


def test_plan_measure_predicts_with_what_it_measured(runs):
    s = mb.Schedule.from_json(_ok(runs[("good", "measured json")])).validate()
    cell_default = mb.LSTM(64, 8).backward_forward_ratio
    assert s.backward_forward_ratio > 0 and s.backward_forward_ratio != cell_default  # timed, not the default
    assert s.byte_cost >= 0.0
    rho = s.backward_forward_ratio
    steps_only = (s.forward_steps + s.T * rho) / (s.T * (1 + rho))
    assert (s.time_ratio < steps_only) == (s.byte_cost > 0)  # a priced pool favours the small one
    same = mb.plan(60, budget=0.1, model=mb.Sequence(mb.LSTM(64, 8), output_size=4), batch=2, dtype="float32")
    assert s.codes.tobytes() == same.codes.tobytes()  # measuring changes the prediction, not the plan


def test_plan_actions_resimulate_to_the_schedule(runs):
    lines = _ok(runs[("good", "msm actions")]).splitlines()
    ref = mb.plan(60, budget=0.1, **DEFAULT_SIZES)
    assert len(lines) == len(ref.codes)
    cur = forwards = 0
    reversed_steps = []
    for line in lines:
        op, step, slot = line.split()
        step, slot = int(step), int(slot)
        assert op in mb.OPS
        if op == "advance":
            forwards += step - cur
            cur = step
        elif op == "keep":
            assert step == cur + 1
            forwards += 1
            cur = step
        elif op in ("restore", "restore_internal"):
            cur = step
        elif op == "reverse":
            reversed_steps.append(step)
    assert forwards == ref.forward_steps
    assert reversed_steps == list(range(60, 0, -1))


def test_plan_text_reports_budget_against_plain_bptt(runs):
    out = _ok(runs[("good", "msm text")])
    full = mb.plan(60, budget=1.0, policy="full", **DEFAULT_SIZES)
    ref = mb.plan(60, budget=0.1, **DEFAULT_SIZES)
    assert re.search(r"budget\s+.*\(10\.00% of plain BPTT\)", out)
    assert f"{full.peak_bytes / 2**20:.2f} MiB" in out
    assert re.search(rf"forward steps\s+{ref.forward_steps}\b", out)
    assert re.search(rf"time ratio\s+{ref.time_ratio:.3f}", out)
    assert re.search(rf"slots\s+{ref.n_hidden_slots} hidden .* {ref.n_internal_slots} internal", out)
    assert "timeline" in out


def test_plan_text_long_schedule_is_elided_without_timeline(capsys):
    out = _main_out(capsys, ["plan", "--steps", "300", "--budget", "5%", "--policy", "revolve"])
    assert "timeline" not in out
    assert "more; --format actions lists all" in " ".join(out.split())
    assert len(out.splitlines()) < 40
    assert re.search(rf"forward steps\s+{mb.plan(300, budget=0.05, policy='revolve', **DEFAULT_SIZES).forward_steps}\b",
                     out)


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plan_plot_writes_a_png(runs):
    _ok(runs[("good", "plan plot")])
    assert _is_png(runs["tmp"] / "schedule.png")


# ---- compare -------------------------------------------------------------------------
def test_compare_json_agrees_with_mb_plan(runs):
    data = json.loads(_ok(runs[("good", "compare json")]))
    full = mb.plan(60, budget=1.0, policy="full", **DEFAULT_SIZES)
    assert data["plain_bytes"] == full.peak_bytes
    assert len(data["rows"]) == 4 * len(mb.POLICIES)
    budgets = {"3%": 0.03, "10%": 0.10, "50%": 0.50, "80MiB": 80 * 2**20}
    for budget, value in budgets.items():
        rows = {r["policy"]: r for r in data["rows"] if r["budget"] == budget}
        assert set(rows) == set(mb.POLICIES)
        for policy, r in rows.items():
            try:
                ref = mb.plan(60, budget=value, policy=policy, **DEFAULT_SIZES)
            except mb.MemoryBudgetError:
                assert not r["fits"] and r["least_bytes"] > value * (1 if value > 1 else full.peak_bytes)
                continue
            assert r["fits"] and r["forward_steps"] == ref.forward_steps and r["peak_bytes"] == ref.peak_bytes
            assert r["time_ratio"] == pytest.approx(ref.time_ratio)
        fitting = [r["forward_steps"] for r in rows.values() if r["fits"]]
        if fitting:  # MSM is optimal: it fits whenever anything fits, with the fewest forwards
            assert rows["msm"]["fits"] and rows["msm"]["forward_steps"] == min(fitting)
    assert not any(r["fits"] for r in data["rows"] if r["budget"] == "3%")
    assert [r["fits"] for r in data["rows"] if r["budget"] == "80MiB"] == [True] * len(mb.POLICIES)
    # a policy that does not fit names the least budget that plans, and one byte less does not
    for r in data["rows"]:
        if not r["fits"]:
            least = r["least_bytes"]
            mb.plan(60, budget=least, policy=r["policy"], **DEFAULT_SIZES)
            with pytest.raises(mb.MemoryBudgetError):
                mb.plan(60, budget=least - 1, policy=r["policy"], **DEFAULT_SIZES)


def test_compare_text_table_and_plot(runs):
    out = _ok(runs[("good", "compare text")])
    for policy in mb.POLICIES:
        assert re.search(rf"\b{policy}\b", out)
    assert "does not fit: needs at least" in out  # 'full' never fits 3%
    assert _is_png(runs["tmp"] / "costs.png")


# ---- help, version, python -m ------------------------------------------------------------
@pytest.mark.parametrize("name", ["help", "plan help", "compare help", "demo help"])
def test_help_has_usage_and_examples(runs, name):
    out = _ok(runs[("good", name)])
    assert out.startswith("usage: memopt-bptt")
    assert "examples:" in out and "memopt-bptt " in out.split("examples:")[1]


def test_version(runs):
    assert _ok(runs[("good", "version")]).strip() == f"memopt-bptt {mb.__version__}"


def _without_timing(text: str) -> str:
    """The plan's text without its 'planning' line (seconds and bytes measured in each run)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("planning "))


def test_python_dash_m_is_the_same_program(runs):
    assert _without_timing(_ok(runs[("module", "msm text")])) == _without_timing(_ok(runs[("good", "msm text")]))
    assert "planning " in _ok(runs[("good", "msm text")])
    bad, script_bad = runs[("module", "bad")], runs[("bad", "zero steps")]
    assert bad.returncode == script_bad.returncode == 2
    assert bad.stderr.replace("'0'", "") == script_bad.stderr.replace("'0'", "")


# ---- demo ------------------------------------------------------------------------------
def test_demo_learns_within_the_budget_and_checks_the_gradient(runs):
    """The default demo: the plan, a loss well below the best constant prediction's
    on a fresh batch, the measured memory against plain BPTT's, bit-identity."""
    out = _ok(runs[("good", "demo")])
    plan = re.search(r"^plan: msm in .* \((\d+\.\d)% of plain BPTT's .*: (\d+) forward steps for (\d+) ", out, re.M)
    assert plan and float(plan.group(1)) <= 5.0 and int(plan.group(2)) > int(plan.group(3))
    assert re.search(r"^training loss: [0-9.]+ .* -> [0-9.]+", out, re.M)
    fresh = re.search(r"^fresh batch: loss ([0-9.]+), .* constant prediction's ([0-9.]+) ", out, re.M)
    assert fresh, out
    loss, constant = float(fresh.group(1)), float(fresh.group(2))
    assert constant > 0.1          # the targets' variance: about 0.2 for the adding problem
    assert loss < 0.5 * constant   # learned, by a wide margin (measured: about 1% of it)
    peak = re.search(r"^memory: measured peak ([0-9.]+) (B|KiB|MiB) .* against plain BPTT's planned", out, re.M)
    assert peak
    assert re.search(r"^forward steps: (\d+) counted \(planned \1,", out, re.M)
    assert re.search(r"^gradient check: loss and all 6 parameter gradients are bit-identical to plain BPTT", out,
                     re.M)


# ---- budget parsing (in process) --------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("4096", 4096), ("64MiB", 64 * 2**20), ("1GB", 10**9), ("5%", 0.05), ("0.05", 0.05), (".5", 0.5),
    ("1.0", 1.0), ("2.5e6", 2_500_000), ("100%", 1.0),
])
def test_parse_cli_budget(text, value):
    got = parse_cli_budget(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["0", "-3MiB", "5 parsecs", "1.5", "0.0", "", "5%%", "101%", "nan"])
def test_parse_cli_budget_rejects(text):
    with pytest.raises(ValueError):
        parse_cli_budget(text)


def test_no_command_prints_help_and_exits_2(capsys):
    from memopt_bptt.cli import main
    assert main([]) == 2
    assert "usage: memopt-bptt" in capsys.readouterr().out


def test_main_returns_codes_in_process(capsys):
    from memopt_bptt.cli import main
    assert main(["plan", "--steps", "10", "--slots", "3", "--policy", "hsm", "--format", "actions"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(mb.plan(10, slots=3, policy="hsm").codes)
    assert main(["plan", "--steps", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps" in err
