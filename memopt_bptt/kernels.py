"""Building blocks for custom cells' jitted kernels (see docs/custom_cell.md).

The public subset of the kernels the built-in cells use, callable from
``@njit`` code:

* ``gemm(trans_a, trans_b, alpha, a, b, beta, c)``: ``c = alpha op(a) op(b) +
  beta c`` through BLAS, row-major 2-D arrays, no temporaries (a weight
  gradient accumulates in place).
* ``product(a, b, c, accumulate)``: a register-tiled ``c (+)= a @ b`` for the
  narrow products of one step (BLAS where the columns do not fill vectors);
  deterministic, so row splits give the same bits.
* ``transposed_input(x, buf)``, ``add_row_sums(m, a, b)``: helpers for
  feature-major cells.
* ``one``, ``exp``, ``sigmoid``, ``tanh`` and the array forms
  ``sigmoid_into``, ``tanh_into``, ``relu_into``, ``grad_through_output``:
  activations in the array's own precision, without libm calls, that LLVM
  vectorizes.
* ``copy_into(src, dst)``, ``copy2_into(src, dst)``: ``dst = src`` for 1-D and
  2-D arrays of one shape, as loops: a slice assignment ``dst[a:b] = src``
  in jitted code makes Numba compile its formatted shape-mismatch error,
  seconds per function on a machine's first run.

Example::

    from numba import njit
    from memopt_bptt.kernels import gemm, tanh_into

    @njit(cache=True, error_model="numpy")
    def my_forward(w_ih, w_hh, b_ih, b_hh, w_out, b_out, x, s_prev, s_new, internal, work):
        ...
"""

from ._kernels.activations import copy2_into
from ._kernels.activations import copy_into
from ._kernels.activations import exp
from ._kernels.activations import grad_through_output
from ._kernels.activations import one
from ._kernels.activations import relu_into
from ._kernels.activations import sigmoid
from ._kernels.activations import sigmoid_into
from ._kernels.activations import tanh
from ._kernels.activations import tanh_into
from ._kernels.blas import add_row_sums
from ._kernels.blas import gemm
from ._kernels.blas import transposed_input
from ._kernels.mm import product

__all__ = [
    "add_row_sums",
    "copy2_into",
    "copy_into",
    "exp",
    "gemm",
    "grad_through_output",
    "one",
    "product",
    "relu_into",
    "sigmoid",
    "sigmoid_into",
    "tanh",
    "tanh_into",
    "transposed_input",
]
