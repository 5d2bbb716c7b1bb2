"""Parameter files: ``.npz`` archives of named arrays, written atomically.

:func:`save_params` writes to a temporary file in the target's folder and
renames it into place, so a crash never leaves a half-written file under the
name; :func:`load_params` checks names and shapes against a model when given
one, listing every mismatch at once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import numpy as np

from .._model import Sequence

__all__ = ["save_params", "load_params"]

Params = dict[str, np.ndarray]


def save_params(path: str | os.PathLike, params: Mapping[str, np.ndarray]) -> None:
    """Write params to an ``.npz`` file at exactly ``path``, atomically.

    The arrays go to a temporary file in the same directory, which then
    replaces ``path`` (``os.replace``), so a crash never leaves a half-written
    file under that name.

    Example::

        mb.save_params("lstm.npz", params)
    """
    if not isinstance(params, Mapping) or not params:
        raise TypeError("save_params: params must be a non-empty dict of numpy arrays")
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray):
            raise TypeError(f"save_params: params[{k!r}] must be a numpy array under a str name")
        if v.dtype == object:
            raise TypeError(f"save_params: params[{k!r}] has dtype object; only numeric arrays are saved")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **params)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_params(path: str | os.PathLike, model: Sequence | None = None) -> Params:
    """Read params written by :func:`save_params` (or any ``.npz`` of arrays).

    With ``model``, the names and shapes must match ``model.param_shapes``;
    otherwise a ValueError lists every missing, unexpected and mis-shaped
    entry.

    Example::

        params = mb.load_params("lstm.npz", model)
    """
    with np.load(os.fspath(path), allow_pickle=False) as npz:
        params = {k: np.array(npz[k]) for k in npz.files}
    if model is None:
        return params
    if not isinstance(model, Sequence):
        raise TypeError(f"load_params: model must be a memopt_bptt.Sequence, got {type(model).__name__}")
    expected = model.param_shapes
    problems = []
    missing = [k for k in expected if k not in params]
    extra = [k for k in params if k not in expected]
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    for k, shape in expected.items():
        if k in params and params[k].shape != tuple(shape):
            problems.append(f"{k!r} has shape {params[k].shape}, the model expects {tuple(shape)}")
    if problems:
        raise ValueError(f"load_params: {os.fspath(path)!r} does not fit {model!r}: " + "; ".join(problems))
    model.check_params(params, where="load_params")
    return {k: params[k] for k in expected}
