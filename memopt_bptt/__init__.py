"""memopt_bptt: memory-efficient Backpropagation Through Time with exact gradients.

Gruslys et al. (2016)'s BPTT-HSM/ISM/MSM: a dynamic-programming planner picks
which hidden or internal states to keep for a memory budget in bytes, and a
Numba executor replays forward segments to return gradients bit-identical to
plain BPTT.

Example::

    import memopt_bptt as mb
    model = mb.Sequence(mb.LSTM(input_size=8, hidden_size=32), output_size=4, loss="mse")
    params = model.init_params(seed=0)
    loss, grads = mb.value_and_grad(model, params, xs, ys, budget="4MiB")
"""

from ._actions import Action
from ._actions import OPS
from ._actions import Op
from ._budget import MemoryBudgetError
from ._calibrate import Calibration
from ._calibrate import calibrate
from ._budget import format_bytes
from ._budget import parse_budget
from ._executor import measure_byte_cost
from ._executor import measure_step_times
from ._layers import Embedding
from ._model import Sequence
from ._planner import POLICIES
from ._planner import beta
from ._planner import hsm_cost
from ._planner import numforw
from ._planner import plan
from ._schedule import Schedule
from ._schedule import ScheduleError
from ._tasks import adding_problem
from ._tasks import char_lm
from ._tasks import copy_task
from ._tasks import frequency_classification
from ._tasks import load_text
from .training import Adam
from .training import AdamState
from .training import DivergenceError
from .training import SGD
from .training import SGDState
from .training import clip_by_global_norm
from .training import global_norm
from .training import grad_norm_by_lag
from .training import load_params
from .training import save_params
from .training import train
from .training import truncated_value_and_grad
from .training import truncation_windows
from ._value_and_grad import Report
from ._value_and_grad import final_state
from ._value_and_grad import value_and_grad
from ._version import __version__
from .cells import GRU
from .cells import LSTM
from .cells import Cell
from .cells import Elman
from .cells import Jordan

__all__ = [
    "Action",
    "Adam",
    "AdamState",
    "Calibration",
    "adding_problem",
    "beta",
    "calibrate",
    "Cell",
    "char_lm",
    "clip_by_global_norm",
    "copy_task",
    "DivergenceError",
    "Elman",
    "Embedding",
    "final_state",
    "format_bytes",
    "frequency_classification",
    "global_norm",
    "grad_norm_by_lag",
    "GRU",
    "hsm_cost",
    "Jordan",
    "load_params",
    "load_text",
    "measure_byte_cost",
    "measure_step_times",
    "LSTM",
    "MemoryBudgetError",
    "numforw",
    "Op",
    "OPS",
    "parse_budget",
    "plan",
    "POLICIES",
    "Report",
    "save_params",
    "Schedule",
    "ScheduleError",
    "Sequence",
    "SGD",
    "SGDState",
    "train",
    "truncated_value_and_grad",
    "truncation_windows",
    "value_and_grad",
    "__version__",
]
