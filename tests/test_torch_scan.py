"""memopt_bptt.torch.scan_loss against independent oracles.

Oracles: plain autograd over the unrolled loop (the same step and loss, one
graph), torch.utils.checkpoint over segments, finite differences in float64
(torch.autograd.gradcheck) on a tiny case, mb.testing.replay_schedule for the
forward count, and a counting wrapper around the step. Cells: nn.LSTMCell,
nn.GRUCell, nn.RNNCell (tanh and relu) and a custom module with two state
tensors and dropout. Skipped cleanly where torch is not installed.
"""

import json
import os
import re
import runpy
import subprocess
import sys

import pytest

import memopt_bptt as mb
from memopt_bptt.testing import replay_schedule

torch = pytest.importorskip("torch")
import memopt_bptt.torch as mbt  # noqa: E402

F = torch.nn.functional
B, I, H, O = 3, 4, 5, 2
F64 = torch.float64
POLICIES = ("msm", "hsm", "ism", "revolve", "sqrt", "full")


# ---- the problems -------------------------------------------------------------------------------

class TwoState(torch.nn.Module):
    """A custom cell with two state tensors (h, m) and dropout on its input."""

    def __init__(self, p: float = 0.3):
        super().__init__()
        self.lin = torch.nn.Linear(I + H, 2 * H)
        self.drop = torch.nn.Dropout(p)

    def forward(self, x, state):
        h, m = state
        a, b = self.lin(torch.cat([self.drop(x), h], -1)).chunk(2, -1)
        m = 0.9 * m + torch.tanh(a)
        return torch.sigmoid(b) * torch.tanh(m), m


CELLS = {
    "lstm": (lambda: torch.nn.LSTMCell(I, H), 2),
    "gru": (lambda: torch.nn.GRUCell(I, H), 1),
    "rnn-tanh": (lambda: torch.nn.RNNCell(I, H, nonlinearity="tanh"), 1),
    "rnn-relu": (lambda: torch.nn.RNNCell(I, H, nonlinearity="relu"), 1),
    "two-state-dropout": (TwoState, 2),
}


def make(name, T, *, dtype=F64, seed=0, x_grad=False, readout_dropout=0.0, device="cpu"):
    """(step, loss_fn, state0, xs, ys, tensors to differentiate) for one cell."""
    torch.manual_seed(seed)
    factory, n_states = CELLS[name]
    step = factory().to(device=device, dtype=dtype)
    readout = torch.nn.Linear(H, O).to(device=device, dtype=dtype)
    drop = torch.nn.Dropout(readout_dropout)
    like = {"dtype": dtype, "device": device}
    states = [torch.randn(B, H, **like).requires_grad_() for _ in range(n_states)]
    state0 = states[0] if n_states == 1 else tuple(states)
    xs = torch.randn(T, B, I, **like).requires_grad_(x_grad)
    ys = torch.randn(T, B, O, **like)

    def loss_fn(state, y):
        h = state if isinstance(state, torch.Tensor) else state[0]
        return F.mse_loss(readout(drop(h)), y)

    wrt = [*step.parameters(), *readout.parameters(), *states] + ([xs] if x_grad else [])
    return step, loss_fn, state0, xs, ys, wrt


def plain(step, loss_fn, state0, xs, ys, reduction="mean"):
    """The oracle: autograd over the unrolled loop."""
    state, losses = state0, []
    for t in range(xs.shape[0]):
        state = step(xs[t], state)
        losses.append(loss_fn(state, ys[t]))
    losses = torch.stack(losses)
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


def grads(loss, wrt):
    return torch.autograd.grad(loss, wrt, allow_unused=True)


def assert_bit_identical(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, i
            assert torch.equal(a, b), f"gradient {i}: max |difference| {(a - b).abs().max().item():.3e}"


def least_bytes(*problem, policy="msm", **kwargs):
    """The least budget that works, following MemoryBudgetError.least_bytes from 1 byte up."""
    budget = 1
    while True:
        try:
            mbt.scan_loss(*problem, budget=budget, policy=policy, **kwargs)
            return budget
        except mb.MemoryBudgetError as exc:
            assert exc.least_bytes > budget
            budget = exc.least_bytes


# ---- the import boundary -------------------------------------------------------------------------

def test_importing_the_core_never_imports_torch():
    code = "import sys, memopt_bptt, memopt_bptt.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- exactness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradients_bit_identical_to_the_unrolled_loop(name):
    T = 23   # a multiple of nothing the schedules use
    step, loss_fn, state0, xs, ys, wrt = make(name, T, x_grad=True)
    torch.manual_seed(1)
    want_loss = plain(step, loss_fn, state0, xs, ys)
    want = grads(want_loss, wrt)
    want_rng = torch.get_rng_state()
    torch.manual_seed(1)
    loss = mbt.scan_loss(step, loss_fn, state0, xs, ys, budget="10%")
    assert torch.equal(torch.get_rng_state(), want_rng)     # the forward draws what the plain loop draws
    assert torch.equal(loss, want_loss)
    assert_bit_identical(grads(loss, wrt), want)
    assert torch.equal(torch.get_rng_state(), want_rng)     # and the backward's replays leave it so


@pytest.mark.parametrize("name", ["lstm", "two-state-dropout"])
def test_bit_identical_across_policies_and_budgets(name):
    T = 31
    problem = make(name, T, readout_dropout=0.2 if name != "lstm" else 0.0)
    *args, wrt = problem
    least = least_bytes(*args)
    seen = {}
    for policy in POLICIES:
        for budget in (least, "10%", "40%", 1.0):
            try:
                torch.manual_seed(2)
                loss, schedule = mbt.scan_loss(*args, budget=budget, policy=policy, return_schedule=True)
            except mb.MemoryBudgetError:
                assert policy in ("sqrt", "full")   # fixed pools: only these may need more than the least
                continue
            seen[(policy, budget)] = (loss, grads(loss, wrt), schedule.forward_steps)
    assert len({steps for *_, steps in seen.values()}) > 3      # the schedules really differ
    torch.manual_seed(2)
    want_loss = plain(*args)
    want = grads(want_loss, wrt)
    for key, (loss, got, _) in seen.items():
        assert torch.equal(loss, want_loss), key
        assert_bit_identical(got, want)


def test_dropout_replays_need_the_saved_generator_state():
    """Without the generators' state in each checkpoint, replays draw other masks: the check can fail."""
    *args, wrt = make("two-state-dropout", 17)
    torch.manual_seed(3)
    want = grads(plain(*args), wrt)
    torch.manual_seed(3)
    loss = mbt.scan_loss(*args, budget="30%", preserve_rng_state=False)
    got = grads(loss, wrt)
    assert any(not torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("T", [1, 2, 37])
def test_short_and_odd_lengths(T):
    *args, wrt = make("lstm", T, x_grad=True)
    want = grads(plain(*args), wrt)
    for budget in (least_bytes(*args), 1.0):
        assert_bit_identical(grads(mbt.scan_loss(*args, budget=budget), wrt), want)


def test_against_torch_utils_checkpoint():
    from torch.utils.checkpoint import checkpoint

    T, segment = 24, 5
    *args, wrt = make("gru", T)
    step, loss_fn, state0, xs, ys = args

    def run(state, lo, hi):
        total = torch.zeros((), dtype=F64)
        for t in range(lo, hi):
            state = step(xs[t], state)
            total = total + loss_fn(state, ys[t])
        return state, total

    state, total = state0, torch.zeros((), dtype=F64)
    for lo in range(0, T, segment):
        state, part = checkpoint(run, state, lo, min(lo + segment, T), use_reentrant=False)
        total = total + part
    want = grads(total, wrt)
    got = grads(mbt.scan_loss(*args, budget="10%", reduction="sum"), wrt)
    worst = max((a - b).abs().max().item() for a, b in zip(got, want))
    assert worst < 1e-12, worst   # the sum over steps is in another order here, so not bit for bit


def test_finite_differences():
    """torch.autograd.gradcheck (central differences, float64) through every input of a tiny scan."""
    torch.manual_seed(4)
    T = 4
    W = torch.randn(3, 2, dtype=F64, requires_grad=True)
    U = torch.randn(3, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    xs = torch.randn(T, 2, 2, dtype=F64, requires_grad=True)
    ys = torch.randn(T, 2, 3, dtype=F64, requires_grad=True)

    def f(W, U, h0, xs, ys):
        def step(x, h):
            return torch.tanh(x @ W.T + h @ U.T)
        return mbt.scan_loss(step, lambda h, y: ((h - y) ** 2).mean(), h0, xs, ys, budget=least, policy="hsm")

    least = least_bytes(lambda x, h: torch.tanh(x @ W.T + h @ U.T), lambda h, y: ((h - y) ** 2).mean(), h0, xs, ys,
                        policy="hsm")
    assert torch.autograd.gradcheck(f, (W, U, h0, xs, ys), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions(reduction):
    *args, wrt = make("rnn-tanh", 9)
    weights = torch.linspace(0.5, 2.0, 9, dtype=F64)

    def total(losses):
        return losses if reduction == "sum" else (losses * weights).sum()

    want = grads(total(plain(*args, reduction=reduction)), wrt)
    got = grads(total(mbt.scan_loss(*args, budget="50%", reduction=reduction)), wrt)
    assert_bit_identical(got, want)


def test_backward_accumulates_into_existing_grads_like_autograd():
    step, loss_fn, state0, xs, ys, wrt = make("lstm", 12)
    params = list(step.parameters())
    plain(step, loss_fn, state0, xs, ys).backward()
    plain(step, loss_fn, state0, xs, ys).backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    mbt.scan_loss(step, loss_fn, state0, xs, ys, budget="30%").backward()
    mbt.scan_loss(step, loss_fn, state0, xs, ys, budget="60%").backward()
    assert_bit_identical([p.grad for p in params], want)


def test_bfloat16_bit_identical():
    *args, wrt = make("lstm", 15, dtype=torch.bfloat16)
    want = grads(plain(*args), wrt)
    assert_bit_identical(grads(mbt.scan_loss(*args, budget="15%"), wrt), want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_step():
    *args, wrt = make("gru", 11)
    scripted = torch.jit.script(args[0])
    args[0] = scripted
    wrt = [*scripted.parameters(), *wrt[len(list(scripted.parameters())):]]
    want = grads(plain(*args), wrt)
    got = grads(mbt.scan_loss(*args, budget="20%"), wrt)
    worst = max((a - b).abs().max().item() for a, b in zip(got, want))
    assert worst < 1e-12, worst


def test_autocast_replays_run_under_the_first_pass_settings():
    """Under CPU autocast (bfloat16) the replays re-enter autocast. The oracle is the loop under autocast
    with cache_enabled=False: with the cache, one cast of each weight serves every step and autograd sums
    the T steps' weight gradients in bfloat16, where the scan (and that loop) sums them in float32."""
    *args, wrt = make("gru", 13, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        want_loss = plain(*args)
    want = grads(want_loss, wrt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mbt.scan_loss(*args, budget=least_bytes(*args))
    assert torch.equal(loss, want_loss)
    assert_bit_identical(grads(loss, wrt), want)


@pytest.mark.slow
def test_compiled_step():
    """A torch.compile'd cell (aot_eager: AOTAutograd's graphs, no C++ compiler); slow: it compiles twice
    (with and without grad)."""
    *args, wrt = make("gru", 11)
    args[0] = torch.compile(args[0], backend="aot_eager")
    # the oracle runs the same compiled step: its decomposed graph need not give eager's bits
    # (2e-17 apart in float64 with one CPU's kernels)
    want = grads(plain(*args), wrt)
    assert_bit_identical(grads(mbt.scan_loss(*args, budget="50%"), wrt), want)


def test_a_weight_computed_outside_the_step_needs_params():
    torch.manual_seed(5)
    raw = torch.randn(H, H, dtype=F64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=F64)
    xs, ys = torch.randn(6, B, H, dtype=F64), torch.randn(6, B, H, dtype=F64)
    W = raw * 0.5     # a non-leaf, made once, read by every step

    def step(x, h):
        return torch.tanh(x + h @ W)

    def loss_fn(h, y):
        return F.mse_loss(h, y)

    with pytest.raises(ValueError, match="params="):
        mbt.scan_loss(step, loss_fn, h0, xs, ys, budget=1.0)
    want = torch.autograd.grad(plain(step, loss_fn, h0, xs, ys), [raw], retain_graph=True)  # W's graph stays
    least = least_bytes(step, loss_fn, h0, xs, ys, params=[W])
    got = grads(mbt.scan_loss(step, loss_fn, h0, xs, ys, budget=least, params=[W]), [raw])
    assert_bit_identical(got, want)


def test_without_grad_the_loss_is_the_plain_loss_and_nothing_is_planned():
    *args, _ = make("lstm", 10)
    want = plain(*args)
    with torch.no_grad():
        loss, schedule = mbt.scan_loss(*args, budget="10%", return_schedule=True)
    assert schedule is None and not loss.requires_grad and torch.equal(loss, want.detach())


# ---- counts and memory ---------------------------------------------------------------------------

@pytest.mark.parametrize("policy", POLICIES)
def test_forward_count_and_tracked_memory_within_budget(policy):
    T = 40
    step, loss_fn, state0, xs, ys, wrt = make("lstm", T)
    calls = []

    def counted(x, state):
        calls.append(1)
        return step(x, state)

    least = least_bytes(counted, loss_fn, state0, xs, ys, policy=policy)
    calls.clear()
    for budget in (least, least + 3 * 1024, "30%"):
        stats = mbt.ScanStats()
        try:
            loss, schedule = mbt.scan_loss(counted, loss_fn, state0, xs, ys, budget=budget, policy=policy,
                                           return_schedule=True, stats=stats)
        except mb.MemoryBudgetError:
            assert policy in ("full", "sqrt") and budget == "30%"
            continue
        first_pass = len(calls)
        loss.backward()
        assert first_pass <= T and len(calls) == schedule.forward_steps == stats.forward_steps
        assert replay_schedule(schedule).forward_steps == schedule.forward_steps
        assert stats.reversals == T
        assert 0 < stats.peak_bytes <= stats.budget_bytes == schedule.budget_bytes, (budget, stats)
        assert schedule.peak_bytes <= stats.budget_bytes
        assert stats.largest_internal_bytes <= stats.internal_bytes
        calls.clear()


def _chained_runs(schedule):
    """Runs of reversals one engine call can take, counted from the actions alone: a reversal of step t
    joins the one of t+1 before it when t+1 was kept right after t was kept or rebuilt from its kept
    internal state (keep t or restore_internal t, then keep t+1)."""
    joined, runs, before = set(), 0, None
    for action in schedule.actions:
        if action.op == "keep" and before is not None and before.op in ("keep", "restore_internal") \
                and before.step == action.step - 1:
            joined.add(action.step)
        if action.op == "reverse" and not (before is not None and before.op == "reverse"
                                           and action.step + 1 in joined):
            runs += 1
        before = action
    return runs


@pytest.mark.parametrize("policy, budget", [("full", 1.0), ("msm", "5%"), ("hsm", "5%"), ("sqrt", 1.0)])
def test_reversals_of_one_graph_run_in_one_engine_call(policy, budget):
    T = 60
    *args, wrt = make("lstm", T)
    stats = mbt.ScanStats()
    loss, schedule = mbt.scan_loss(*args, budget=budget, policy=policy, return_schedule=True, stats=stats)
    loss.backward()
    assert stats.reversals == T
    assert stats.engine_calls == _chained_runs(schedule)
    if policy == "full":
        assert stats.engine_calls == 1


def test_schedule_sizes_come_from_the_measured_step():
    T = 20
    *args, _ = make("lstm", T)
    stats = mbt.ScanStats()
    _, schedule = mbt.scan_loss(*args, budget="10%", return_schedule=True, stats=stats)
    assert stats.state_bytes >= 2 * B * H * 8 and stats.rng_bytes == 0
    assert stats.hidden_bytes == stats.state_bytes
    assert schedule.hidden_quanta * schedule.quantum_bytes == stats.hidden_bytes
    kept = schedule.internal_quanta * schedule.quantum_bytes
    assert stats.internal_bytes <= kept < stats.internal_bytes + schedule.quantum_bytes
    assert schedule.working_bytes == kept + 3 * stats.state_bytes
    assert "measured on step 1" in schedule.description


def _heap_bytes():
    """glibc's heap in use (mallinfo2: small blocks + mmapped ones), or None elsewhere."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


@pytest.mark.skipif(_heap_bytes() is None, reason="needs glibc's mallinfo2")
@pytest.mark.parametrize("name", sorted(CELLS))
def test_kept_step_size_covers_what_the_unrolled_loop_holds_per_step(name):
    """The planned size of a kept step (saved tensors, output, metadata) against the heap the plain loop's
    graph grows by per step, measured by the allocator (the scan's kept step holds its own input state, so
    it may be larger, not smaller)."""
    import gc

    T = 400
    step, loss_fn, state0, xs, ys, _ = make(name, T)
    stats = mbt.ScanStats()
    mbt.scan_loss(step, loss_fn, state0, xs[:4], ys[:4], budget=1.0, stats=stats)
    plain(step, loss_fn, state0, xs[:4], ys[:4])           # warm-up
    gc.collect()
    before = _heap_bytes()
    state, losses = state0, []
    for t in range(T):
        state = step(xs[t], state)
        losses.append(loss_fn(state, ys[t]))
    per_step = (_heap_bytes() - before) / T
    print(f"{name}: planned {stats.internal_bytes} bytes per kept step, the loop holds {per_step:.0f}")
    assert per_step <= stats.internal_bytes <= 1.6 * per_step, (per_step, stats.internal_bytes)


def test_dropout_checkpoints_carry_the_generators_state():
    *args, _ = make("two-state-dropout", 12)
    stats = mbt.ScanStats()
    mbt.scan_loss(*args, budget="20%", stats=stats).backward()
    assert stats.rng_bytes >= torch.get_rng_state().numel()   # the CPU generator's state, and its header
    assert stats.hidden_bytes == stats.state_bytes + stats.rng_bytes
    assert stats.peak_bytes <= stats.budget_bytes


def test_budget_below_the_least_names_it_in_bytes():
    *args, _ = make("lstm", 30)
    with pytest.raises(mb.MemoryBudgetError) as info:
        mbt.scan_loss(*args, budget="1KiB")
    least = info.value.least_bytes
    assert isinstance(least, int) and f"{least} bytes" in str(info.value) and "budget='1KiB'" in str(info.value)
    mbt.scan_loss(*args, budget=least).backward()
    with pytest.raises(mb.MemoryBudgetError):
        mbt.scan_loss(*args, budget=least - 1)
    with pytest.raises(mb.MemoryBudgetError, match="policy='full'") as info:
        mbt.scan_loss(*args, budget=least, policy="full")
    mbt.scan_loss(*args, budget=info.value.least_bytes, policy="full")


@pytest.mark.parametrize("name", ["gru", "two-state-dropout"])
def test_a_second_backward_replays_the_first_pass(name):
    """retain_graph=True: the second backward runs the schedule again from state0, same bits."""
    *args, wrt = make(name, 14)
    least = least_bytes(*args)
    torch.manual_seed(9)
    want = grads(plain(*args), wrt)
    torch.manual_seed(9)
    stats = mbt.ScanStats()
    loss = mbt.scan_loss(*args, budget=least, stats=stats)
    first = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
    steps = stats.forward_steps
    second = grads(loss, wrt)
    assert_bit_identical(first, want)
    assert_bit_identical(second, want)
    assert stats.forward_steps == 2 * steps


def test_in_place_change_of_a_parameter_before_backward_is_refused():
    step, *rest, _ = make("rnn-tanh", 5)
    loss = mbt.scan_loss(step, *rest, budget="50%")
    with torch.no_grad():
        step.weight_hh.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


# ---- bad input -----------------------------------------------------------------------------------

def _lstm_args(T=6):
    *args, _ = make("lstm", T)
    return args


@pytest.mark.parametrize("bad_step, match", [
    (lambda cell: (lambda x, s: cell(x, s)[0]), "step returned a Tensor|step returned a .*tensor"),
    (lambda cell: (lambda x, s: tuple(cell(x, s)) + (s[0],)), "tuple of 3"),
    (lambda cell: (lambda x, s: (cell(x, s)[0][:, :-1], cell(x, s)[1])), r"shape \(3, 4\)"),
    (lambda cell: (lambda x, s: (cell(x, s)[0].float(), cell(x, s)[1])), "torch.float32"),
])
def test_a_step_changing_the_state_is_named(bad_step, match):
    cell, loss_fn, state0, xs, ys = _lstm_args()
    with pytest.raises(ValueError, match="scan_loss: step returned") as info:
        mbt.scan_loss(bad_step(cell), lambda s, y: loss_fn(s if isinstance(s, tuple) else (s,), y), state0, xs, ys,
                      budget="10%")
    assert "state0" in str(info.value)


def test_a_non_scalar_loss_is_named():
    cell, _, state0, xs, ys = _lstm_args()
    readout = torch.nn.Linear(H, O).double()
    with pytest.raises(ValueError, match="loss_fn returned .*shape \\(3, 2\\)"):
        mbt.scan_loss(cell, lambda s, y: F.mse_loss(readout(s[0]), y, reduction="none"), state0, xs, ys,
                      budget="10%")


@pytest.mark.parametrize("change, error, match", [
    ({"targets": "short"}, ValueError, "xs has 6 time steps .* targets has 5"),
    ({"budget": "4096"}, ValueError, "budget='4096' has no unit"),
    ({"budget": "lots"}, ValueError, "budget='lots'"),
    ({"budget": 1.5}, ValueError, "budget=1.5"),
    ({"policy": "best"}, ValueError, "policy='best'"),
    ({"reduction": "max"}, ValueError, "reduction='max'"),
    ({"state0": "zeros"}, TypeError, "state0"),
    ({"state0": ()}, TypeError, "state0"),
    ({"xs": "abc"}, TypeError, "xs"),
    ({"xs": "empty"}, ValueError, "xs has shape \\(0, 3, 4\\)"),
    ({"step": 3}, TypeError, "step"),
    ({"loss_fn": None}, TypeError, "loss_fn"),
    ({"params": [torch.zeros(2)]}, ValueError, "params="),
    ({"stats": {}}, TypeError, "stats="),
    ({"return_schedule": 1}, TypeError, "return_schedule"),
])
def test_bad_arguments_are_named(change, error, match):
    cell, loss_fn, state0, xs, ys = _lstm_args()
    kwargs = dict(step=cell, loss_fn=loss_fn, state0=state0, xs=xs, targets=ys, budget="10%")
    kwargs.update(change)
    if kwargs["targets"] == "short":
        kwargs["targets"] = ys[:5]
    if isinstance(kwargs["xs"], str) and kwargs["xs"] == "empty":
        kwargs["xs"] = xs[:0]
    with pytest.raises(error, match=match):
        mbt.scan_loss(kwargs.pop("step"), kwargs.pop("loss_fn"), kwargs.pop("state0"), kwargs.pop("xs"),
                      kwargs.pop("targets"), **kwargs)


# ---- CUDA (skipped without a device) -------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("name", ["lstm", "two-state-dropout"])
def test_cuda_gradients_and_memory(name):
    T = 200
    step, loss_fn, state0, xs, ys, wrt = make(name, T, dtype=torch.float32, device="cuda")
    torch.cuda.manual_seed(7)
    want = grads(plain(step, loss_fn, state0, xs, ys), wrt)
    torch.cuda.manual_seed(7)
    stats = mbt.ScanStats()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = grads(mbt.scan_loss(step, loss_fn, state0, xs, ys, budget="5%", stats=stats), wrt)
    torch.cuda.synchronize()
    assert_bit_identical(got, want)
    assert stats.peak_bytes <= stats.budget_bytes
    # beyond what the budget counts: the returned gradients, the T losses, one step's temporaries
    # and the allocator's rounding (512-byte blocks)
    grads_bytes = sum(g.numel() * g.element_size() for g in got)
    slack = grads_bytes + stats.internal_bytes + T * 2 * 512
    assert torch.cuda.max_memory_allocated() - base <= stats.budget_bytes + slack


# ---- slow: memory flat in T ----------------------------------------------------------------------

_FLAT_SCRIPT = """
import ctypes, gc, json, sys
import torch, torch.nn.functional as F
import memopt_bptt.torch as mbt

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

torch.set_num_threads(1)
T, budget = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(8)
cell, head = torch.nn.GRUCell(2, 4), torch.nn.Linear(4, 1)

def run(T, stats=None):
    xs, ys = torch.randn(T, 1, 2), torch.randn(T, 1, 1)
    loss, schedule = mbt.scan_loss(cell, lambda h, y: F.mse_loss(head(h), y), torch.zeros(1, 4), xs, ys,
                                   budget=budget, stats=stats, return_schedule=True)
    loss.backward()
    return schedule

run(1000)                                   # imports and the planner's compiled code
xs, ys = torch.randn(T, 1, 2), torch.randn(T, 1, 1)
mbt.scan_loss(cell, lambda h, y: F.mse_loss(head(h), y), torch.zeros(1, 4), xs, ys, budget=budget)
del xs, ys                                  # that planned T's schedule, which stays cached (O(T) by design)
xs_bytes = T * 3 * 4                        # xs and ys, made inside the measured call
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
start = status("VmRSS")
stats = mbt.ScanStats()
schedule = run(T, stats)
print(json.dumps({"rss_peak": status("VmHWM") - start, "tracked_peak": stats.peak_bytes,
                  "budget": stats.budget_bytes, "T_bytes": xs_bytes + T * 4,
                  "forward_steps": stats.forward_steps, "planned": schedule.forward_steps,
                  "reversals": stats.reversals}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_memory_flat_in_T():
    """T = 10^3, 10^4, 10^5 at one byte budget, each in a fresh process: the tracked peak stays within the
    budget, and the process's peak resident memory during a call (the schedule planned before, as a
    training loop's later calls find it), less what is O(T) by design (xs, ys, the T losses), does not
    grow with T."""
    budget = 64 * 1024
    out = {}
    for T in (10 ** 3, 10 ** 4, 10 ** 5):
        proc = subprocess.run([sys.executable, "-c", _FLAT_SCRIPT, str(T), str(budget)], capture_output=True,
                              text=True, timeout=1800, check=True)
        out[T] = rec = json.loads(proc.stdout.strip().splitlines()[-1])
        assert rec["reversals"] == T and rec["forward_steps"] == rec["planned"]
        assert rec["tracked_peak"] <= rec["budget"] <= budget, (T, rec)
    rest = {T: rec["rss_peak"] - rec["T_bytes"] for T, rec in out.items()}
    assert rest[10 ** 5] - rest[10 ** 3] < 2 * 2 ** 20, out   # page granularity and the allocator's slack


@pytest.mark.slow
def test_docs_page_runs(tmp_path):
    """docs/torch.md's python blocks, in order as one script (its own asserts run)."""
    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "torch.md")
    with open(doc, encoding="utf-8") as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)
    script = tmp_path / "torch_doc.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    names = runpy.run_path(str(script))
    assert [row[0] for row in names["rows"]] == ["checkpoint_sequential", "memopt_bptt.torch 5%"]
    assert names["stats"].peak_bytes <= names["stats"].budget_bytes
