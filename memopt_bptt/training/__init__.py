"""Training on top of :func:`memopt_bptt.value_and_grad`: every gradient fits the budget.

One idea per module:

* ``_optim``: :class:`SGD` and :class:`Adam` (optax-style ``init``/``update``
  with NamedTuple states), :func:`global_norm`, :func:`clip_by_global_norm`;
* ``_loop``: :func:`train`, the batch sources and the history it returns,
  and :class:`DivergenceError` (what a non-finite loss or gradient raises);
* ``_truncated``: truncated BPTT(h; h') of Williams & Peng (1990),
  :func:`truncation_windows` and :func:`truncated_value_and_grad`;
* ``_budgeted``: the budget each of many gradients gets (a fraction of the
  longest window's plain BPTT), planned through the package's one plan cache;
* ``_io``: :func:`save_params` / :func:`load_params`;
* ``_diagnostics``: :func:`grad_norm_by_lag`.

Each gradient (of a whole sequence, or of one truncated-BPTT window) is
computed under the caller's memory ``budget``/``policy`` and is exact for
what it differentiates. Everything here is plain NumPy and never mutates the
caller's arrays.

Example::

    import memopt_bptt as mb
    xs, ys = mb.adding_problem(500, 16, seed=0)
    model = mb.Sequence(mb.LSTM(input_size=2, hidden_size=32), output_size=1)
    params, history = mb.train(model, model.init_params(seed=0), (xs, ys), budget=0.05,
                               optimizer=mb.Adam(1e-2), steps=50, clip_norm=1.0)
"""

from ._diagnostics import grad_norm_by_lag
from ._io import load_params
from ._io import save_params
from ._loop import DivergenceError
from ._loop import train
from ._optim import SGD
from ._optim import Adam
from ._optim import AdamState
from ._optim import SGDState
from ._optim import clip_by_global_norm
from ._optim import global_norm
from ._truncated import truncated_value_and_grad
from ._truncated import truncation_windows

__all__ = [
    "Adam",
    "AdamState",
    "clip_by_global_norm",
    "DivergenceError",
    "global_norm",
    "grad_norm_by_lag",
    "load_params",
    "save_params",
    "SGD",
    "SGDState",
    "train",
    "truncated_value_and_grad",
    "truncation_windows",
]
