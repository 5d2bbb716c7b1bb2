"""Recurrent cells: bundles of jitted kernels with PyTorch's parameter layout."""

from ._base import Cell
from .elman import Elman
from .gru import GRU
from .jordan import Jordan
from .lstm import LSTM

__all__ = ["Cell", "Elman", "GRU", "Jordan", "LSTM"]
