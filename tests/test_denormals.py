"""Subnormal numbers in the sweeps: flushed to zero by default, IEEE with flush_denormals=False.

A loss only at the last step of a long sequence sends a gradient back that
shrinks by a factor every step, through float32's subnormal range (below
``np.finfo(np.float32).tiny``, 1.2e-38) to zero. Oracles: IEEE float32
(``flush_denormals=False``) and a float64 run of the same model, which stays
far from its own subnormal range; plain BPTT of the same mode for the
schedules (bit-identity holds in either mode).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import memopt_bptt as mb
from memopt_bptt._kernels import fpmode

TINY = np.finfo(np.float32).tiny
X86 = fpmode._X86


def model(flush):
    return mb.Sequence(mb.LSTM(3, 8), output_size=2, loss_at="last", flush_denormals=flush)


def shrinking_params(dtype):
    """Small recurrent weights and forget gates nearly shut (gate order i, f, g, o): dL/dh_t and
    dL/dc_t shrink by a factor of 100 or more a step going back."""
    params = model(True).init_params(seed=4, dtype=dtype)
    params["cell.weight_hh"] = params["cell.weight_hh"] * 0.05
    params["cell.weight_ih"] = params["cell.weight_ih"] * 0.05
    params["cell.bias_ih"] = params["cell.bias_ih"].copy()
    params["cell.bias_ih"][8:16] = -6.0
    return params


def data(T, dtype):
    rng = np.random.default_rng(T)
    return rng.normal(size=(T, 2, 3)).astype(dtype), rng.normal(size=(2, 2)).astype(dtype)


def grads(flush, T, dtype=np.float32, **kw):
    xs, ys = data(T, dtype)
    return mb.value_and_grad(model(flush), shrinking_params(dtype), xs, ys, return_h0_grad=True, **kw)


def subnormal_T():
    """The first length whose IEEE float32 dL/dh_0 has subnormal elements and no normal one."""
    for T in range(2, 80):
        dh0 = np.abs(grads(False, T)[2])
        if 0 < dh0.max() < TINY:
            return T
    raise AssertionError("no length gave a subnormal dL/dh_0")


@pytest.mark.skipif(not X86, reason="FTZ/DAZ are x86's; elsewhere flush_denormals changes nothing")
def test_flushed_gradients_are_zero_where_ieee_ones_are_subnormal():
    T = subnormal_T()
    loss_k, g_k, dh0_k = grads(False, T)
    loss_f, g_f, dh0_f = grads(True, T)
    sub = (dh0_k != 0) & (np.abs(dh0_k) < TINY)
    assert sub.any()
    assert np.all(dh0_f[sub] == 0)  # flushed, where IEEE kept a subnormal value
    # the IEEE values are float64's, to a subnormal's own precision (an absolute 1.4e-45 a step)
    loss_64, g_64, dh0_64 = grads(True, T, dtype=np.float64)
    assert np.all(np.abs(dh0_k - dh0_64) <= 1e-44 * T + 1e-6 * np.abs(dh0_64))
    # everything of normal size is the same to float32's rounding: the flushed parts are below 1.2e-38
    assert abs(loss_f - loss_k) <= 1e-6 * abs(loss_k)
    for k in g_k:
        assert np.allclose(g_f[k], g_k[k], rtol=1e-6, atol=1e-30), k
        assert np.allclose(g_f[k], g_64[k], rtol=1e-4, atol=1e-30), k


@pytest.mark.parametrize("flush", [True, False])
def test_every_schedule_gives_plain_bptts_bits_in_either_mode(flush):
    T = 40
    full = grads(flush, T)
    for kw in ({"budget": 0.5}, {"budget": 0.25}, {"budget": 0.25, "policy": "revolve"}):
        out = grads(flush, T, **kw)
        assert out[0] == full[0]
        for k in full[1]:
            assert np.array_equal(out[1][k], full[1][k]), (kw, k)
        assert np.array_equal(out[2], full[2]), kw


@pytest.mark.skipif(not X86, reason="MXCSR is x86's")
def test_the_callers_mode_is_left_alone():
    before = fpmode.mode()
    grads(True, 20)
    assert fpmode.mode() == before
    assert before & (fpmode.FTZ | fpmode.DAZ) == 0  # this thread still computes with IEEE subnormals
    assert np.float32(TINY) * np.float32(0.5) != 0


@pytest.mark.skipif(not X86, reason="MXCSR is x86's")
def test_flush_and_restore_a_threads_mode():
    seen = {}

    def worker():
        seen["start"] = fpmode.mode()
        old = fpmode.flush()
        seen["during"] = fpmode.mode()
        seen["product"] = np.float32(TINY) * np.float32(0.5)  # a subnormal result: written as zero
        fpmode.restore(old)
        seen["after"] = fpmode.mode()

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    assert seen["during"] == seen["start"] | fpmode.FTZ | fpmode.DAZ
    assert seen["product"] == 0
    assert seen["after"] == seen["start"]


def test_flush_denormals_must_be_a_bool():
    with pytest.raises(TypeError, match="flush_denormals=1 must be True"):
        mb.Sequence(mb.LSTM(3, 8), output_size=2, flush_denormals=1)
    assert "flush_denormals=False" in repr(model(False))
    assert "flush_denormals" not in repr(model(True))
