"""Shared by the unit-thread tests (test_stack_units.py, test_gru_units.py): their data, the rows-mode
twin of a model, and comparisons of (loss, grads[, dL/dh0]) results bit for bit or to a tolerance."""

import numpy as np

import memopt_bptt as mb


def rows_twin(model):
    """The same layers with one thread and one lane (rows mode)."""
    cells = list(model.cells)
    return mb.Sequence(cells if model.layers.stacked else cells[0], output_size=model.output_size,
                       loss=model.loss, loss_at=model.loss_at, unit_threads=1, lanes=1)


def data(model, T, batch, seed):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(T, batch, model.input_size))
    shape = (batch,) if model.loss_at == "last" else (T, batch)
    if model.loss == "mse":
        ys = rng.normal(size=shape + (model.output_size,))
    else:
        ys = rng.integers(0, model.output_size, size=shape)
    shapes = model.state_shape(batch)
    h0 = ([0.5 * rng.normal(size=s) for s in shapes] if isinstance(shapes, list)
          else 0.5 * rng.normal(size=shapes))
    return xs, ys, h0


def as_list(h):
    return list(h) if isinstance(h, list) else [h]


def assert_bits(a, b, what):
    assert a[0] == b[0], (what, a[0], b[0])
    for k in b[1]:
        assert np.array_equal(a[1][k], b[1][k]), (what, k)
    if len(b) > 2:
        for x, y in zip(as_list(a[2]), as_list(b[2])):
            assert np.array_equal(x, y), (what, "dL/dh0")


def assert_close(a, b, rtol, what):
    assert abs(a[0] - b[0]) <= rtol * max(1.0, abs(b[0])), (what, a[0], b[0])
    for k in b[1]:
        scale = max(1.0, float(np.abs(b[1][k]).max()))
        assert np.abs(a[1][k] - b[1][k]).max() <= rtol * scale, (what, k)
    if len(b) > 2:
        for x, y in zip(as_list(a[2]), as_list(b[2])):
            assert np.abs(x - y).max() <= rtol * max(1.0, np.abs(y).max()), (what, "dL/dh0")
