"""The executor: run a Schedule in one jitted sweep and return exact gradients.

``_value_and_grad`` checks inputs and finds the schedule; ``_runner`` owns
the buffers and the workers (whole batch, lanes or unit threads, as
``memopt_bptt._split`` decides); ``_sweep.py`` is the one action dispatch,
compiled per cell and mode by ``_compile`` with the kernels bound in, so
Numba caches it on disk; ``_measure`` times steps for the planner's model.
"""

from ._measure import measure_byte_cost
from ._measure import measure_step_times
from ._value_and_grad import Report
from ._value_and_grad import final_state
from ._value_and_grad import value_and_grad

__all__ = ["Report", "final_state", "measure_byte_cost", "measure_step_times", "value_and_grad"]
