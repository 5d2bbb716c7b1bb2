"""The executor: run a Schedule's codes in one jitted sweep and return exact gradients.

It never plans: ``memopt_bptt._value_and_grad`` checks inputs, finds the
schedule and hands it over. ``_runner`` owns the buffers and the workers
(whole batch, lanes or unit threads, as ``memopt_bptt._split`` decides);
``_sweep.py`` is the one action dispatch, compiled per cell and mode by
``_compile`` with the kernels bound in, so Numba caches it on disk;
``_measure`` times steps for the planner's time model.
"""

from ._measure import measure_byte_cost
from ._measure import measure_step_times
from ._runner import Data
from ._runner import Run

__all__ = ["Data", "Run", "measure_byte_cost", "measure_step_times"]
