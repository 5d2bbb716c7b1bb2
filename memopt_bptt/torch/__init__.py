"""memopt_bptt.torch: the planner's optimal schedules for any PyTorch recurrent step.

An optional extra (``pip install -e ".[torch]"``); ``import memopt_bptt``
never imports torch. :func:`scan_loss` runs ``step(x_t, state) -> state``
(any nn.Module or function, e.g. ``nn.LSTMCell``) over a sequence and
returns the mean of ``loss_fn(state_t, targets[t])``, whose backward gives
the same gradients as autograd over the unrolled loop while keeping only
what fits a memory budget in bytes.

How: Gruslys, Munos, Danihelka, Lanctot & Graves (2016), "Memory-Efficient
Backpropagation Through Time". A *hidden* checkpoint is a state (the step's
output tensors); an *internal* state is a step's kept autograd graph (the
tensors autograd saved for its backward), sized by measuring step 1 through
``torch.autograd.graph.saved_tensors_hooks``, so alpha = internal / hidden is
measured. :func:`memopt_bptt.plan` gives the schedule with the fewest forward
steps for the budget (BPTT-MSM by default); a Python interpreter of its
actions runs it, the first pass in an autograd Function's forward and the
replays and reversals in its backward (``_sweep.py``; a step and its
checkpoints in ``_step.py``). Random generators are saved with every
checkpoint where the step draws random numbers (dropout), and autocast is
re-entered for replays (``_context.py``).

Compared with ``torch.utils.checkpoint`` / ``checkpoint_sequential``: no
segment length to choose, a budget in bytes instead, and the least
recomputation for it; memory does not grow with T beyond the budget, the
losses (one scalar per step) and the returned gradients.

Limits: parameters are found in step 1's graph (a tensor first read by a
later step is missed: pass it in ``params=``); the kept-step size is step
1's, so a step whose graph grows with t (data-dependent shapes) is
under-planned (``ScanStats.largest_internal_bytes`` shows it); backward runs
once, and not twice-differentiable (``create_graph=True`` is not
supported); tensors the step reads from outside that need no gradient are
not counted as the scan's memory, and per-node autograd metadata is not
counted at all.

Example::

    import torch
    import torch.nn.functional as F
    import memopt_bptt.torch as mbt

    cell, readout = torch.nn.LSTMCell(8, 32), torch.nn.Linear(32, 4)
    xs, ys = torch.randn(500, 16, 8), torch.randn(500, 16, 4)
    state0 = (torch.zeros(16, 32), torch.zeros(16, 32))
    loss = mbt.scan_loss(cell, lambda s, y: F.mse_loss(readout(s[0]), y), state0, xs, ys, budget="5%")
    loss.backward()
"""

from ._scan import ScanStats
from ._scan import scan_loss

__all__ = [
    "ScanStats",
    "scan_loss",
]
