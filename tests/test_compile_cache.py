"""The executor's sweep is compiled once per cell and mode, and cached on disk.

Oracles: Numba's own cache counters (``dispatcher.stats``) in fresh
processes sharing one NUMBA_CACHE_DIR, and the sweep's name, which must
change with the source of every file the compiled code comes from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt._executor import _compile

_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import memopt_bptt as mb
    from memopt_bptt._executor._compile import sweep_for
    out = {}
    for kind, make, split in [("lstm", mb.LSTM, {}), ("lstm", mb.LSTM, {"unit_threads": 2}),
                              ("gru", mb.GRU, {}), ("elman", mb.Elman, {}), ("jordan", mb.Jordan, {})]:
        model = mb.Sequence(make(input_size=3, hidden_size=4), output_size=2, **split)
        params = model.init_params(seed=0)
        rng = np.random.default_rng(0)
        xs, ys = rng.normal(size=(6, 2, 3)), rng.normal(size=(6, 2, 2))
        loss, _ = mb.value_and_grad(model, params, xs, ys)
        mode = "units" if split else "rows"
        stats = sweep_for(model, mode).stats
        out[f"{kind}-{mode}"] = [loss, sum(stats.cache_hits.values()), sum(stats.cache_misses.values())]
    json.dump(out, sys.stdout)
""")


def _child():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_second_process_loads_every_builtin_sweep_from_the_cache():
    """The first child compiles what no earlier process cached (in the default cache, which
    the rest of the suite shares, so this costs no extra compile); the second compiles nothing."""
    first = _child()
    second = _child()
    assert first.keys() == second.keys()
    for key, (loss, hits, misses) in first.items():
        assert hits + misses >= 1, (key, first[key])
        assert second[key][2] == 0 and second[key][1] >= 1, (key, second[key])  # loaded, not compiled
        assert second[key][0] == loss, key                                      # and it computes the same


def test_sweep_name_follows_the_sources(monkeypatch, tmp_path):
    cell = mb.Sequence(mb.GRU(input_size=2, hidden_size=3), output_size=1)
    kernels = _compile._kernels(cell, "rows")
    before = _compile._tag(cell, "rows", kernels)
    assert before == _compile._tag(cell, "rows", kernels)          # deterministic
    assert before != _compile._tag(cell, "units", kernels)         # the mode is part of it
    deeper = mb.Sequence([mb.GRU(input_size=2, hidden_size=3), mb.GRU(input_size=3, hidden_size=3)], output_size=1)
    assert _compile._tag(deeper, "rows", _compile._kernels(deeper, "rows")) != before  # a stack is another sweep
    copy = tmp_path / "_sweep.py"
    copy.write_text(open(_compile._SOURCE_FILE).read() + "\n# an edit\n")
    monkeypatch.setattr(_compile, "_SOURCE_FILE", str(copy))
    assert _compile._tag(cell, "rows", kernels) != before          # an edited source is another sweep


def test_builtin_cells_are_cached_and_custom_ones_are_not():
    assert all(_compile.is_cached(mb.Sequence(make(input_size=2, hidden_size=3), output_size=1))
               for make in (mb.LSTM, mb.GRU, mb.Elman, mb.Jordan))
    from numba import njit

    @njit
    def fwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
        for b in range(x.shape[0]):
            for k in range(s_new.shape[0] // x.shape[0]):
                s_new[b * 2 + k] = s_prev[b * 2 + k] + x[b, 0]
        internal[:] = s_new

    @njit
    def bwd(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, ds, ds_prev, g1, g2, g3, g4, g5, g6, work):
        ds_prev[:] = ds

    @njit
    def rebuild(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, internal, s_out, work):
        s_out[:] = internal

    cell = mb.Cell(kind="sum", input_size=1, hidden_size=2, n_gates=1, forward_step=fwd, backward_step=bwd,
                   state_from_internal=rebuild, state_width=lambda out: 2, internal_width=lambda out: 2,
                   work_size=lambda batch, out: 0)
    model = mb.Sequence(cell, output_size=1)
    assert not _compile.is_cached(model)
    params = model.init_params(seed=0)
    xs = np.ones((4, 1, 1))
    # h_t = h_{t-1} + x_t from zeros: after 4 steps both units hold 4
    assert np.array_equal(mb.final_state(model, params, xs), np.full((1, 2), 4.0))


def test_unknown_mode_is_refused():
    elman = mb.Sequence(mb.Elman(input_size=2, hidden_size=3), output_size=1)  # no unit kernels
    with pytest.raises(ValueError, match="mode='lanes'"):
        _compile.sweep_for(elman, "lanes")
    with pytest.raises(ValueError, match="unit kernels"):
        _compile.sweep_for(elman, "units")


def test_final_state_and_measurement_share_value_and_grads_compiled_sweep():
    """One compiled signature serves value_and_grad, final_state and measure_step_times
    (each extra one would cost seconds of compiling in every new process)."""
    model = mb.Sequence(mb.Elman(input_size=2, hidden_size=3), output_size=1)
    params = model.init_params(seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(5, 2, 2)), rng.normal(size=(5, 2, 1))
    sweep = _compile.sweep_for(model, "rows")
    mb.value_and_grad(model, params, xs, ys, budget=0.9)
    compiled = set(sweep.signatures)  # other tests in this process may have compiled others before
    mb.final_state(model, params, xs)
    mb.measure_step_times(model, batch=2, dtype="float64", repeats=2)
    assert set(sweep.signatures) == compiled
