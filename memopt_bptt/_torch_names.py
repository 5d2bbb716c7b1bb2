"""PyTorch state_dicts in and out: the same names, a prefix map for the modules' attribute names.

Torch is imported only when tensors are asked for (``params_to_torch(...,
tensors=True)``); a state_dict's tensors are read with ``.detach().cpu().numpy()``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["params_from_torch", "params_to_torch"]


def _torch_key(name: str, prefixes: Mapping) -> str:
    module, rest = name.split(".", 1)
    theirs = prefixes.get(module, module)
    return f"{theirs}.{rest}" if theirs else rest


def _checked_prefixes(model: Any, prefixes: Any, where: str) -> Mapping:
    if prefixes is None:
        return {}
    if not isinstance(prefixes, Mapping):
        raise TypeError(f"{where}: prefixes must be a dict such as {{'rnn': 'lstm'}}, got {type(prefixes).__name__}")
    ours = {name.split(".", 1)[0] for name in model.param_shapes}
    unknown = [k for k in prefixes if k not in ours]
    if unknown:
        raise ValueError(f"{where}: prefixes has keys {unknown} that are not modules of this model; "
                         f"its modules are {sorted(ours)}")
    return prefixes


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def params_from_torch(model: Any, state_dict: Mapping, *, dtype: Any = None, prefixes: Any = None
                      ) -> dict[str, np.ndarray]:
    where = "params_from_torch"
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{where}: state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    prefixes = _checked_prefixes(model, prefixes, where)
    wanted = {_torch_key(name, prefixes): name for name in model.param_shapes}
    missing = [k for k in wanted if k not in state_dict]
    unexpected = [k for k in state_dict if k not in wanted]
    if missing or unexpected:
        raise ValueError(f"{where}: the state_dict's keys do not match this model's: missing {missing}, "
                         f"unexpected {unexpected}; expected {list(wanted)} (rename modules with prefixes=, "
                         "e.g. {'rnn': 'lstm'}, or '' for no prefix)")
    out = {}
    for key, name in wanted.items():
        a = _as_array(state_dict[key])
        if dtype is not None:
            a = a.astype(dtype)
        if a.shape != model.param_shapes[name]:
            raise ValueError(f"{where}: state_dict[{key!r}] has shape {a.shape}, but {name!r} is "
                             f"{model.param_shapes[name]} in this model")
        out[name] = np.ascontiguousarray(a)
    model.check_params(out, where=where)
    return out


def params_to_torch(model: Any, params: Mapping, *, prefixes: Any = None, tensors: bool = False) -> dict:
    where = "params_to_torch"
    model.check_params(params, where=where)
    prefixes = _checked_prefixes(model, prefixes, where)
    out = {_torch_key(name, prefixes): np.array(params[name]) for name in model.param_shapes}
    if tensors:
        import torch  # optional: only here, when asked for

        out = {k: torch.from_numpy(v) for k, v in out.items()}
    return out
