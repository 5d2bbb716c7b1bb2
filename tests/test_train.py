"""Training utilities (memopt_bptt/training/) against independent oracles:
closed-form and PyTorch optimizer steps, plain numpy Elman loops for truncated
BPTT(h; h') and for ||dL/dh_t||, PyTorch LSTMCell loops (detach at the window
start) where torch is installed, and hand-derived window tables."""

import os

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt.training import (
    SGD,
    Adam,
    AdamState,
    clip_by_global_norm,
    global_norm,
    grad_norm_by_lag,
    load_params,
    save_params,
    train,
    truncated_value_and_grad,
    truncation_windows,
)

ELMAN = mb.Sequence(mb.Elman(input_size=3, hidden_size=5), output_size=2, loss="mse")
LSTM = mb.Sequence(mb.LSTM(input_size=3, hidden_size=4), output_size=2, loss="mse")


def data(T, B, *, seed, model=ELMAN, dtype=np.float64):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(T, B, model.cell.input_size)).astype(dtype)
    ys = rng.normal(size=(T, B, model.output_size)).astype(dtype)
    return xs, ys


def params_of(model, seed=0, scale=1.0):
    p = model.init_params(seed=seed)
    return {k: v * scale for k, v in p.items()}


# ---- an independent numpy Elman (tanh) with a masked, truncated backward --------------------------

def np_forward(p, xs, h, start, stop):
    """States h_start..h_stop (list) from h at position start."""
    hs = [h]
    for t in range(start, stop):
        h = np.tanh(xs[t] @ p["cell.weight_ih"].T + p["cell.bias_ih"] + h @ p["cell.weight_hh"].T + p["cell.bias_hh"])
        hs.append(h)
    return hs


def np_window(p, xs, ys, h_start, start, loss_from, end, *, norms=None):
    """Mean mse over steps loss_from+1..end and its gradient back-propagated to start."""
    B, O = ys.shape[1], ys.shape[2]
    n_loss = end - loss_from
    hs = np_forward(p, xs, h_start, start, end)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh = np.zeros_like(h_start)
    loss = 0.0
    for t in range(end - 1, start - 1, -1):
        h, h_prev = hs[t + 1 - start], hs[t - start]
        if t >= loss_from:
            out = h @ p["readout.weight"].T + p["readout.bias"]
            loss += np.sum((out - ys[t]) ** 2) / (n_loss * B * O)
            dout = 2.0 * (out - ys[t]) / (n_loss * B * O)
            g["readout.weight"] += dout.T @ h
            g["readout.bias"] += dout.sum(0)
            dh = dh + dout @ p["readout.weight"]
        if norms is not None:
            norms[t] = np.linalg.norm(dh)
        dpre = dh * (1.0 - h * h)
        g["cell.weight_ih"] += dpre.T @ xs[t]
        g["cell.weight_hh"] += dpre.T @ h_prev
        g["cell.bias_ih"] += dpre.sum(0)
        g["cell.bias_hh"] += dpre.sum(0)
        dh = dpre @ p["cell.weight_hh"]
    return loss, g


def np_truncated(p, xs, ys, windows):
    """sum_k (n_k / T) * (window k's mean loss, gradient), states carried from zero."""
    T, B = xs.shape[:2]
    hs = np_forward(p, xs, np.zeros((B, p["cell.weight_hh"].shape[0])), 0, T)
    loss, grads = 0.0, {k: np.zeros_like(v) for k, v in p.items()}
    for start, loss_from, end in windows:
        lk, gk = np_window(p, xs, ys, hs[start], start, loss_from, end)
        w = (end - loss_from) / T
        loss += w * lk
        for k in grads:
            grads[k] += w * gk[k]
    return loss, grads


def assert_close(a, b, rtol=1e-10, atol=1e-13):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# ---- optimizers ---------------------------------------------------------------------------------

def test_sgd_step_is_p_minus_lr_g_and_leaves_inputs_alone():
    p = params_of(ELMAN)
    g = params_of(ELMAN, seed=1)
    p_copy = {k: v.copy() for k, v in p.items()}
    g_copy = {k: v.copy() for k, v in g.items()}
    opt = SGD(0.3)
    new, _ = opt.update(p, g, opt.init(p))
    for k in p:
        np.testing.assert_array_equal(new[k], p_copy[k] - 0.3 * g_copy[k])
        np.testing.assert_array_equal(p[k], p_copy[k])
        np.testing.assert_array_equal(g[k], g_copy[k])


def test_sgd_momentum_matches_closed_form():
    rng = np.random.default_rng(0)
    p = {"w": rng.normal(size=(3, 2))}
    gs = [{"w": rng.normal(size=(3, 2))} for _ in range(3)]
    opt = SGD(0.1, momentum=0.9)
    state = opt.init(p)
    cur = p
    for g in gs:
        cur, state = opt.update(cur, g, state)
    v1 = gs[0]["w"]
    v2 = 0.9 * v1 + gs[1]["w"]
    v3 = 0.9 * v2 + gs[2]["w"]
    expect = p["w"] - 0.1 * v1 - 0.1 * v2 - 0.1 * v3
    np.testing.assert_allclose(cur["w"], expect, rtol=1e-14)


def test_adam_first_step_closed_form_and_dtype():
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        p = {"w": rng.normal(size=(4, 3)).astype(dtype)}
        g = {"w": rng.normal(size=(4, 3)).astype(dtype)}
        opt = Adam(0.01)
        new, state = opt.update(p, g, opt.init(p))
        assert new["w"].dtype == dtype and isinstance(state, AdamState) and state.count == 1
        # m_hat = g and v_hat = g^2 after one step: the move is lr * g / (|g| + eps).
        expect = p["w"].astype(np.float64) - 0.01 * g["w"] / (np.abs(g["w"]) + 1e-8)
        np.testing.assert_allclose(new["w"], expect, rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizers_match_torch(name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    p = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
    gs = [{k: rng.normal(size=v.shape) for k, v in p.items()} for _ in range(4)]
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    if name == "sgd":
        ours = SGD(0.05, momentum=0.8)
        theirs = torch.optim.SGD(list(tp.values()), lr=0.05, momentum=0.8)
    else:
        ours = Adam(0.02, betas=(0.8, 0.99), eps=1e-7)
        theirs = torch.optim.Adam(list(tp.values()), lr=0.02, betas=(0.8, 0.99), eps=1e-7)
    state = ours.init(p)
    cur = p
    for g in gs:
        cur, state = ours.update(cur, g, state)
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        theirs.step()
    for k in p:
        np.testing.assert_allclose(cur[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="lr"):
        SGD(0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="betas"):
        Adam(1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        Adam(1e-3, eps=-1.0)
    opt = SGD(0.1)
    with pytest.raises(ValueError, match="keys"):
        opt.update({"a": np.zeros(2)}, {"b": np.zeros(2)}, opt.init({}))


# ---- clipping ------------------------------------------------------------------------------------

def test_clip_by_global_norm():
    rng = np.random.default_rng(3)
    g = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(7,)).astype(np.float32)}
    flat = np.concatenate([g["a"].ravel(), g["b"].astype(np.float64)])
    true_norm = float(np.sqrt(np.sum(flat ** 2)))
    assert global_norm(g) == pytest.approx(true_norm, rel=1e-14)
    before = {k: v.copy() for k, v in g.items()}
    clipped, norm = clip_by_global_norm(g, true_norm / 2)
    assert norm == pytest.approx(true_norm, rel=1e-14)
    assert global_norm(clipped) == pytest.approx(true_norm / 2, rel=1e-6)
    assert clipped["b"].dtype == np.float32
    np.testing.assert_allclose(clipped["a"], g["a"] * 0.5, rtol=1e-12)  # direction kept
    same, norm2 = clip_by_global_norm(g, true_norm * 2)
    assert norm2 == pytest.approx(true_norm) and all(same[k] is g[k] for k in g)
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])
    with pytest.raises(FloatingPointError):
        clip_by_global_norm({"a": np.array([np.inf])}, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(g, 0.0)


# ---- truncated BPTT -------------------------------------------------------------------------------

# Rows derived by hand from the definition: window k ends at e = min(k h', T),
# injects error at steps e_{k-1}+1..e and back-propagates to max(0, e - h).
WINDOW_TABLE = [
    (10, 4, 4, [(0, 0, 4), (4, 4, 8), (6, 8, 10)]),
    (10, 5, 3, [(0, 0, 3), (1, 3, 6), (4, 6, 9), (5, 9, 10)]),
    (6, 6, 6, [(0, 0, 6)]),
    (6, 9, 2, [(0, 0, 2), (0, 2, 4), (0, 4, 6)]),
    (3, 1, 1, [(0, 0, 1), (1, 1, 2), (2, 2, 3)]),
]


@pytest.mark.parametrize("T, h, hp, expect", WINDOW_TABLE)
def test_truncation_windows_table(T, h, hp, expect):
    assert truncation_windows(T, h=h, h_prime=hp) == expect


def test_truncation_argument_errors():
    with pytest.raises(ValueError, match="h=2 must be >= h_prime=3"):
        truncation_windows(10, h=2, h_prime=3)
    with pytest.raises(ValueError, match="h_prime"):
        truncation_windows(10, h=2, h_prime=0)
    xs, ys = data(6, 2, seed=0)
    with pytest.raises(ValueError, match="h_prime"):
        truncated_value_and_grad(ELMAN, params_of(ELMAN), xs, ys, h=2, h_prime=3)


@pytest.mark.parametrize("model", [ELMAN, LSTM], ids=["elman", "lstm"])
def test_truncated_whole_sequence_is_plain_bptt_bit_for_bit(model):
    xs, ys = data(9, 3, seed=4, model=model)
    p = params_of(model)
    loss, grads = mb.value_and_grad(model, p, xs, ys)
    for budget in (None, 0.5):
        tl, tg = truncated_value_and_grad(model, p, xs, ys, h=9, h_prime=9, budget=budget)
        assert tl == loss
        for k in grads:
            assert np.array_equal(tg[k], grads[k]), k


def test_truncated_with_long_reach_is_the_exact_gradient():
    xs, ys = data(11, 2, seed=5)
    p = params_of(ELMAN)
    loss, grads = mb.value_and_grad(ELMAN, p, xs, ys)
    for hp in (1, 3, 4):
        tl, tg = truncated_value_and_grad(ELMAN, p, xs, ys, h=11, h_prime=hp)
        assert tl == pytest.approx(loss, rel=1e-12)
        assert_close(tg, grads, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T, h, hp, budget", [(10, 4, 4, None), (10, 5, 3, 0.8), (11, 3, 1, None),
                                               (7, 7, 2, 0.7), (8, 2, 2, "4KiB")])
def test_truncated_matches_numpy_loop(T, h, hp, budget):
    xs, ys = data(T, 3, seed=T + h + hp)
    p = params_of(ELMAN, scale=2.0)  # larger weights: a truncation that is wrong shows
    loss, grads = truncated_value_and_grad(ELMAN, p, xs, ys, h=h, h_prime=hp, budget=budget)
    want_loss, want = np_truncated(p, xs, ys, truncation_windows(T, h=h, h_prime=hp))
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert_close(grads, want, rtol=1e-9, atol=1e-12)
    if h < T:  # really truncated: differs from the full gradient
        _, full = mb.value_and_grad(ELMAN, p, xs, ys)
        assert max(np.max(np.abs(full[k] - grads[k])) for k in full) > 1e-6


@pytest.mark.parametrize("budget", [None, 0.7])
def test_truncated_window_gradient_matches_numpy_window(budget):
    """One window with h > h': error only at its last h' steps, back-propagated h
    steps from the carried state, against a plain numpy loop over that window."""
    from memopt_bptt.training._budgeted import BudgetedPlans
    from memopt_bptt.training._truncated import window_value_and_grad

    T, h, hp = 9, 6, 3
    xs, ys = data(T, 2, seed=6)
    p = params_of(ELMAN, scale=1.5)
    start, loss_from, end = truncation_windows(T, h=h, h_prime=hp)[2]
    assert (start, loss_from, end) == (3, 6, 9)
    h_start = np_forward(p, xs, np.zeros((2, 5)), 0, T)[start]
    want_loss, want = np_window(p, xs, ys, h_start, start, loss_from, end)
    plans = BudgetedPlans(ELMAN, budget, None, where="test")
    window_budget = plans.budget_for(h, 2, np.float64)
    loss, got, weight = window_value_and_grad(plans, p, xs, ys, h_start, (start, loss_from, end),
                                              budget=window_budget)
    assert weight == (end - loss_from) * 2 * ELMAN.output_size  # the loss terms it counts (mse: every output)
    assert loss == pytest.approx(want_loss, rel=1e-10)
    assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_truncated_lstm_matches_torch_detach_loop():
    torch = pytest.importorskip("torch")
    T, B, h, hp = 10, 2, 4, 3
    xs, ys = data(T, B, seed=7, model=LSTM)
    p = params_of(LSTM, scale=2.0)
    loss, grads = truncated_value_and_grad(LSTM, p, xs, ys, h=h, h_prime=hp)
    cell = torch.nn.LSTMCell(3, 4).double()
    lin = torch.nn.Linear(4, 2).double()
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor(p["cell.weight_ih"]))
        cell.weight_hh.copy_(torch.tensor(p["cell.weight_hh"]))
        cell.bias_ih.copy_(torch.tensor(p["cell.bias_ih"]))
        cell.bias_hh.copy_(torch.tensor(p["cell.bias_hh"]))
        lin.weight.copy_(torch.tensor(p["readout.weight"]))
        lin.bias.copy_(torch.tensor(p["readout.bias"]))
    txs, tys = torch.tensor(xs), torch.tensor(ys)
    with torch.no_grad():
        states = [(torch.zeros(B, 4, dtype=torch.float64), torch.zeros(B, 4, dtype=torch.float64))]
        for t in range(T):
            states.append(cell(txs[t], states[-1]))
    total = 0.0
    for start, loss_from, end in truncation_windows(T, h=h, h_prime=hp):
        hc = (states[start][0].clone(), states[start][1].clone())  # detached: the truncation
        outs = []
        for t in range(start, end):
            hc = cell(txs[t], hc)
            if t >= loss_from:
                outs.append(lin(hc[0]))
        window_loss = torch.nn.functional.mse_loss(torch.stack(outs), tys[loss_from:end])
        w = (end - loss_from) / T
        (w * window_loss).backward()
        total += w * window_loss.item()
    theirs = {"cell.weight_ih": cell.weight_ih, "cell.weight_hh": cell.weight_hh, "cell.bias_ih": cell.bias_ih,
              "cell.bias_hh": cell.bias_hh, "readout.weight": lin.weight, "readout.bias": lin.bias}
    assert loss == pytest.approx(total, rel=1e-12)
    assert_close(grads, {k: v.grad.numpy() for k, v in theirs.items()}, rtol=1e-9, atol=1e-12)


# ---- the training loop ------------------------------------------------------------------------------

def test_train_full_batch_sgd_equals_manual_loop():
    xs, ys = data(8, 3, seed=8)
    p0 = params_of(ELMAN)
    before = {k: v.copy() for k, v in p0.items()}
    got, hist = train(ELMAN, p0, (xs, ys), optimizer=SGD(0.2), steps=3, budget=0.6, progress=False)
    cur = p0
    losses = []
    for _ in range(3):
        loss, g = mb.value_and_grad(ELMAN, cur, xs, ys)
        losses.append(loss)
        cur = {k: cur[k] - 0.2 * g[k] for k in cur}
    for k in cur:
        assert np.array_equal(got[k], cur[k]), k
        assert np.array_equal(p0[k], before[k])  # caller's params untouched
    assert hist["loss"] == losses
    assert len(hist["grad_norm"]) == len(hist["time"]) == hist["updates"] == 3
    assert hist["batch"] == [0, 1, 2] and hist["batches"] == 3
    assert all(b >= a for a, b in zip(hist["time"], hist["time"][1:]))
    s = hist["schedule"]
    assert s["T"] == 8 and s["policy"] == "msm" and s["peak_bytes"] <= s["budget_bytes"]


def test_train_is_deterministic_by_seed():
    def draw(rng):
        return data(6, 2, seed=int(rng.integers(1 << 30)))

    runs = [train(ELMAN, params_of(ELMAN), draw, optimizer=Adam(0.05), steps=4, seed=s, progress=False)
            for s in (11, 11, 12)]
    (pa, ha), (pb, hb), (pc, hc) = runs
    assert ha["loss"] == hb["loss"]
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert ha["loss"] != hc["loss"]


def test_train_iterable_epochs_steps_and_callback():
    batches = [data(5, 2, seed=s) for s in range(3)]
    _, h = train(ELMAN, params_of(ELMAN), batches, optimizer=SGD(0.1), epochs=2, progress=False)
    assert h["batch"] == list(range(6))
    _, h = train(ELMAN, params_of(ELMAN), batches, optimizer=SGD(0.1), steps=7, progress=False)
    assert h["updates"] == 7
    with pytest.raises(ValueError, match="one-shot iterator"):
        train(ELMAN, params_of(ELMAN), iter(batches), optimizer=SGD(0.1), epochs=2, progress=False)
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        train(ELMAN, params_of(ELMAN), iter(batches), optimizer=SGD(0.1), steps=5, progress=False)
    seen = []

    def stop_at_two(update, params, history):
        seen.append((update, len(history["loss"])))
        return update == 1

    _, h = train(ELMAN, params_of(ELMAN), batches[0], optimizer=SGD(0.1), steps=10, progress=False,
                 callback=stop_at_two)
    assert seen == [(0, 1), (1, 2)] and h["updates"] == 2


def test_train_clip_norm_limits_the_step():
    xs, ys = data(6, 2, seed=9)
    p0 = params_of(ELMAN, scale=3.0)
    _, g = mb.value_and_grad(ELMAN, p0, xs, ys)
    norm = global_norm(g)
    got, hist = train(ELMAN, p0, (xs, ys), optimizer=SGD(1.0), steps=1, clip_norm=norm / 10, progress=False)
    assert hist["grad_norm"][0] == pytest.approx(norm, rel=1e-14)
    moved = global_norm({k: got[k] - p0[k] for k in got})
    assert moved == pytest.approx(norm / 10, rel=1e-9)


def test_train_truncated_updates_follow_williams_peng():
    """Online BPTT(3; 3) with SGD: each window's update uses the window gradient at the
    current params, from the state carried by the forward run with earlier params."""
    T, h, hp, lr = 9, 3, 3, 0.5
    xs, ys = data(T, 2, seed=10)
    p0 = params_of(ELMAN, scale=1.5)
    snapshots = []
    _, hist = train(ELMAN, p0, (xs, ys), optimizer=SGD(lr), steps=1, truncate=(h, hp), progress=False,
                    callback=lambda u, p, hh: snapshots.append(p))
    assert hist["updates"] == 3 and hist["batch"] == [0, 0, 0] and hist["truncate"] == (3, 3)
    cur, state = p0, np.zeros((2, 5))
    for k, (start, loss_from, end) in enumerate(truncation_windows(T, h=h, h_prime=hp)):
        assert start == loss_from  # h == h': the window starts where the carried state is
        loss, g = np_window(cur, xs, ys, state, start, loss_from, end)
        state = np_forward(cur, xs, state, start, end)[-1]  # run with the params of this window
        cur = {n: cur[n] - lr * g[n] for n in cur}
        assert hist["loss"][k] == pytest.approx(loss, rel=1e-12)
        assert_close(snapshots[k], cur, rtol=1e-10)


def test_train_argument_errors():
    xs, ys = data(5, 2, seed=0)
    p = params_of(ELMAN)
    kw = dict(optimizer=SGD(0.1), progress=False)
    with pytest.raises(ValueError, match="exactly one of steps"):
        train(ELMAN, p, (xs, ys), **kw)
    with pytest.raises(ValueError, match="exactly one of steps"):
        train(ELMAN, p, (xs, ys), steps=2, epochs=2, **kw)
    with pytest.raises(ValueError, match="steps=0"):
        train(ELMAN, p, (xs, ys), steps=0, **kw)
    with pytest.raises(ValueError, match="no epochs"):
        train(ELMAN, p, lambda rng: (xs, ys), epochs=1, **kw)
    with pytest.raises(TypeError, match="optimizer"):
        train(ELMAN, p, (xs, ys), steps=1, optimizer=object(), progress=False)
    with pytest.raises(ValueError, match="truncate"):
        train(ELMAN, p, (xs, ys), steps=1, truncate=3, **kw)
    with pytest.raises(ValueError, match="h_prime"):
        train(ELMAN, p, (xs, ys), steps=1, truncate=(2, 3), **kw)
    with pytest.raises(ValueError, match="clip_norm"):
        train(ELMAN, p, (xs, ys), steps=1, clip_norm=-1.0, **kw)
    with pytest.raises(TypeError, match="data must be"):
        train(ELMAN, p, 42, steps=1, **kw)
    with pytest.raises(ValueError, match="needs budget"):
        train(ELMAN, p, (xs, ys), steps=1, policy="hsm", **kw)
    with pytest.raises(mb.MemoryBudgetError, match="truncation window"):
        train(ELMAN, p, (xs, ys), steps=1, truncate=(2, 2), budget=0.01, **kw)


def test_train_progress_bar_shows_loss(capsys):
    xs, ys = data(5, 2, seed=0)
    train(ELMAN, params_of(ELMAN), (xs, ys), optimizer=SGD(0.1), steps=2, progress=True)
    assert "loss=" in capsys.readouterr().err


# ---- parameter files ---------------------------------------------------------------------------------

def test_save_load_roundtrip_is_atomic(tmp_path, monkeypatch):
    p = params_of(LSTM)
    path = tmp_path / "weights"  # no extension: written at exactly this name
    save_params(path, p)
    assert os.listdir(tmp_path) == ["weights"]
    back = load_params(path, LSTM)
    assert list(back) == list(p)
    for k in p:
        assert back[k].dtype == p[k].dtype and np.array_equal(back[k], p[k])
    # A failing write leaves the old file intact and no temporary file behind.
    p2 = {k: v + 1.0 for k, v in p.items()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        save_params(path, p2)
    assert os.listdir(tmp_path) == ["weights"]
    assert np.array_equal(load_params(path)["cell.weight_ih"], p["cell.weight_ih"])


def test_load_params_names_every_difference(tmp_path):
    p = params_of(LSTM)
    bad = dict(p)
    del bad["readout.bias"]
    bad["extra"] = np.zeros(3)
    bad["cell.weight_hh"] = np.zeros((3, 3))
    save_params(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError) as info:
        load_params(tmp_path / "bad.npz", LSTM)
    msg = str(info.value)
    assert "missing ['readout.bias']" in msg and "unexpected ['extra']" in msg
    assert "'cell.weight_hh' has shape (3, 3), the model expects (16, 4)" in msg
    assert set(load_params(tmp_path / "bad.npz")) == set(bad)  # no model: loads as is


# ---- gradient norms by lag --------------------------------------------------------------------------

def test_grad_norm_by_lag_matches_numpy_loop():
    T, B = 12, 3
    xs, ys = data(T, B, seed=12)
    p = params_of(ELMAN, scale=2.0)
    norms = np.zeros(T)
    np_window(p, xs, ys, np.zeros((B, 5)), 0, 0, T, norms=norms)
    got = grad_norm_by_lag(ELMAN, p, xs, ys)
    assert got.shape == (T,) and got.dtype == np.float64
    np.testing.assert_allclose(got, norms, rtol=1e-10)
    np.testing.assert_array_equal(grad_norm_by_lag(ELMAN, p, xs, ys, budget=0.5, policy="hsm"), got)


def test_grad_norm_by_lag_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    T, B = 8, 2
    xs, ys = data(T, B, seed=13, model=LSTM)
    p = params_of(LSTM, scale=2.0)
    cell = torch.nn.LSTMCell(3, 4).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(torch.tensor(p["cell." + name]))
    w, b = torch.tensor(p["readout.weight"]), torch.tensor(p["readout.bias"])
    hc = (torch.zeros(B, 4, dtype=torch.float64), torch.zeros(B, 4, dtype=torch.float64))
    hs, outs = [], []
    for t in range(T):
        hc = cell(torch.tensor(xs[t]), hc)
        hc[0].retain_grad()
        hs.append(hc[0])
        outs.append(hc[0] @ w.T + b)
    torch.nn.functional.mse_loss(torch.stack(outs), torch.tensor(ys)).backward()
    want = np.array([float(h.grad.norm()) for h in hs])
    np.testing.assert_allclose(grad_norm_by_lag(LSTM, p, xs, ys, budget=0.7), want, rtol=1e-10)
