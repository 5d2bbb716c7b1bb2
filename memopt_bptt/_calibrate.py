"""Choosing a sweep's split by measurement on this machine (issue 14): ``mb.calibrate``.

memopt_bptt._split's rule picks lanes, unit threads or one sweep from the
model and the batch by thresholds measured on two machine kinds. On another
machine (another vector width, a smaller L2) the rule can pick a path twice
as slow as another one the library has. ``calibrate(model, batch)`` times
the candidate splits of that model and batch here, plain BPTT on random
data, interleaved round by round, and keeps the fastest, in a small JSON
file next to Numba's cache. From then on every Sequence of the same *class*
on this machine (the same cell kinds, sizes within a factor of sqrt(2), the
batch within a factor of sqrt(2)) whose ``lanes`` and
``unit_threads`` are left automatic takes the calibrated split instead of
the rule's; an explicit ``lanes=`` or ``unit_threads=`` always wins.

The candidates are the splits the rule chooses between, each as the user
could ask for it: one sweep (``lanes=1, unit_threads=1``), two unit threads
(cells with unit kernels), and two lanes where their second gradient
accumulator costs a budget no more than the rule allows anywhere
(``LANE_MAX_ACCUMULATOR_STATES`` hidden states of the batch, or recurrent
GEMMs below ``LANE_MAX_MACS`` multiply-adds, where the rule takes lanes
itself), so a calibrated split never needs much more memory than the rule's
would. A candidate replaces the rule's choice only when its median time over
the rule's, paired round by round, is below ``1 - margin``: between paths
that measure alike the rule's stays, so machines that agree with the rule
compute the same bits.

What the calibrated split changes: the sweep's speed, and (like any split)
the last bits of the gradients against another split's; not the schedule's
bit-identity across policies and budgets, which holds for any fixed split.
The file is read once per process (and again after ``calibrate`` writes it);
``MEMOPT_BPTT_CALIBRATION=off`` ignores it, ``MEMOPT_BPTT_CALIBRATION=<path>``
puts it elsewhere. With ``MEMOPT_BPTT_CALIBRATION_AUTO=1``, ``value_and_grad``
(and so ``train``) calibrates a model's class itself the first time it meets
one without an entry (:func:`calibrate_if_asked`); by default it never
measures by itself, so a fresh install computes the rule's bits.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["calibrate", "Calibration", "calibration_path", "calibrated_split", "class_key", "pick",
           "calibrate_if_asked"]

VERSION = 1
"""The file's format; entries of another version are ignored."""
PAUSE = 0.15
"""Seconds between timed calls: OpenBLAS's workers spin for a while after a
product on several threads, and slowed a unit-thread call right after a
one-sweep call by 1.5-2x with a 0.02 s pause (benchmarks/bench_split.py
uses the same pause)."""
DATA_BYTES = 256 << 20
"""The timed calls' T keeps plain BPTT's internal states and the random data under this."""
MARGIN = 0.05
"""A candidate must measure this much faster than the rule's choice to replace it."""


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured and kept.

    ``lanes`` and ``unit_threads`` are the split kept (as ``mb.Sequence``'s
    arguments), ``rule`` the rule's own choice, ``seconds`` every
    candidate's median seconds per call at ``T`` steps, ``over_rule`` its
    median time over the rule's, paired round by round, ``path`` the file
    and ``key`` the entry it is stored under."""

    lanes: int
    unit_threads: int
    rule: str
    chosen: str
    T: int
    rounds: int
    seconds: dict = field(default_factory=dict)
    over_rule: dict = field(default_factory=dict)
    calibration_seconds: float = 0.0
    path: str = ""
    key: str = ""

    def __str__(self) -> str:
        if not self.seconds:
            return f"kept the rule's {self.rule}: the only candidate for this model and batch ({self.path})"
        rows = ", ".join(f"{c} {self.seconds[c]:.4f} s ({self.over_rule[c]:.2f}x)" for c in self.seconds)
        return (f"calibrated {self.chosen} (the rule's: {self.rule}) at T={self.T}, median of {self.rounds} "
                f"rounds: {rows}; {self.calibration_seconds:.1f} s, kept in {self.path}")


def calibration_path() -> str | None:
    """The calibration file: ``MEMOPT_BPTT_CALIBRATION`` if it names a path
    (None if it is "off"), else beside Numba's cache: ``NUMBA_CACHE_DIR`` if
    set, else this package's ``__pycache__`` if writable, else the user's
    cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)/memopt_bptt."""
    env = os.environ.get("MEMOPT_BPTT_CALIBRATION", "").strip()
    if env.lower() in ("off", "0", "no", "false"):
        return None
    if env:
        return os.path.abspath(os.path.expanduser(env))
    name = "memopt_bptt_calibration.json"
    numba_dir = os.environ.get("NUMBA_CACHE_DIR", "").strip()
    if numba_dir:
        return os.path.join(numba_dir, name)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    if os.access(here if os.path.isdir(here) else os.path.dirname(here), os.W_OK):
        return os.path.join(here, name)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "memopt_bptt", name)


_MACHINE: str | None = None


def machine_key() -> str:
    """What the paths' speed depends on besides the model: the CPU Numba
    compiles for (NUMBA_CPU_NAME or the host's) with its features, OpenBLAS's
    core type if forced, and the CPUs this process may use."""
    global _MACHINE
    if _MACHINE is None:
        import hashlib

        from numba.core import config
        from llvmlite import binding

        from ._executor._runner import usable_cpus
        named = config.CPU_NAME not in (None, "", "host")
        name = config.CPU_NAME if named else binding.get_host_cpu_name()
        features = config.CPU_FEATURES if named else binding.get_host_cpu_features().flatten()
        digest = hashlib.sha1((features or "").encode()).hexdigest()[:10]
        blas = os.environ.get("OPENBLAS_CORETYPE", "")
        _MACHINE = f"{name}/{digest}/{blas}/cpus={usable_cpus()}"
    return _MACHINE


def _bucket(n: int) -> int:
    """Sizes within a factor of sqrt(2) of the same power of two share a class."""
    return int(round(math.log2(max(int(n), 1))))


def class_key(model: Any, batch: int) -> str:
    """The calibration entry a model and batch belong to on this machine (one
    for both dtypes: every query of a split, ``Sequence.lane_batches(batch)``
    among them, answers without a dtype)."""
    layers = model.layers
    cells = [f"{c.kind}:{_bucket(c.input_size)}:{_bucket(c.hidden_size)}" for c in layers.cells]
    embedding = "emb" if layers.embedding is not None else "dense"
    return "|".join([machine_key(), embedding, ",".join(cells), f"batch:{_bucket(batch)}"])


_LOADED: dict = {"path": None, "mtime": None, "entries": {}}


def _entries(path: str) -> dict:
    """The file's entries (read once per process, again when it changes)."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    if _LOADED["path"] == path and _LOADED["mtime"] == mtime:
        return _LOADED["entries"]
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["entries"] if data.get("version") == VERSION else {}
        if not isinstance(entries, dict):
            raise ValueError("entries is not an object")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"memopt_bptt: the calibration file {path} cannot be read ({e}); the split rule is used. "
                      "Delete it and run mb.calibrate again.", RuntimeWarning, stacklevel=3)
        entries = {}
    _LOADED.update(path=path, mtime=mtime, entries=entries)
    return entries


def calibrated_split(model: Any, batch: int) -> tuple[int, int, dict] | None:
    """(lanes, unit_threads, entry) calibrated for this model's class, or None."""
    path = calibration_path()
    if path is None:
        return None
    entry = _entries(path).get(class_key(model, batch))
    if not isinstance(entry, dict):
        return None
    lanes, units = entry.get("lanes"), entry.get("unit_threads")
    if not (isinstance(lanes, int) and isinstance(units, int) and lanes >= 1 and units >= 1):
        return None
    if units > 1 and model.unit_cells is None or lanes > batch:
        return None  # not a split this model can take
    return lanes, units, entry


def pick(over_rule: dict[str, float], rule: str, margin: float = MARGIN) -> str:
    """The candidate kept: the least median time over the rule's, if below
    ``1 - margin``, else the rule's own."""
    best = min(over_rule, key=lambda c: (over_rule[c], c != rule))
    return best if over_rule[best] < 1.0 - margin else rule


def _name(lanes: int, units: int) -> str:
    return "lanes=1,unit_threads=1" if lanes == units == 1 else (f"lanes={lanes}" if lanes > 1
                                                                 else f"unit_threads={units}")


def candidates(model: Any, batch: int) -> dict[str, tuple[int, int]]:
    """The splits timed: one sweep, two unit threads, two lanes (see the module's docstring)."""
    from . import _split
    out = {_name(1, 1): (1, 1)}
    cells = model.unit_cells
    if cells is not None and min(c.hidden_size for c in cells) >= 2:
        out[_name(1, 2)] = (1, 2)
    macs = _split.recurrent_macs(model, batch)
    if batch >= 2 and (macs < _split.LANE_MAX_MACS or
                       _split.lane_accumulator_states(model, batch) <= _split.LANE_MAX_ACCUMULATOR_STATES):
        out[_name(2, 1)] = (2, 1)
    return out


def _with_split(model: Any, lanes: int, units: int) -> Any:
    from ._model import Sequence
    layers = model.layers
    items = ([layers.embedding] if layers.embedding is not None else []) + list(layers.cells)
    return Sequence(items if layers.stacked else items[0], output_size=model.output_size, loss=model.loss,
                    loss_at=model.loss_at, lanes=lanes, unit_threads=units, flush_denormals=model.flush_denormals)


def _data(model: Any, T: int, batch: int, dt: np.dtype, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model.embedding is not None:
        xs = rng.integers(0, model.embedding.vocab_size, (T, batch))
    else:
        xs = rng.standard_normal((T, batch, model.input_size)).astype(dt)
    rows = (batch,) if model.loss_at == "last" else (T, batch)
    if model.loss == "mse":
        ys = rng.standard_normal(rows + (model.output_size,)).astype(dt)
    else:
        ys = rng.integers(0, model.output_size, rows)
    return xs, ys


def _positive(value: Any, name: str, integer: bool, hint: str) -> None:
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"calibrate: {name}={value!r} must be a positive {'int' if integer else 'number'} ({hint})")


def calibrate(model: Any, batch: int, *, dtype: Any = "float32", seconds: float = 3.0, rounds: int = 5,
              margin: float = MARGIN, seed: int = 0, save: bool = True) -> Calibration:
    """Time the candidate splits of ``model`` at ``batch`` on this machine and keep the fastest.

    Every candidate (one sweep, two unit threads, two lanes; see
    memopt_bptt._calibrate) runs plain BPTT on the same random data: one
    warm-up call each (which compiles it, or loads it from Numba's cache:
    the first calibration of a cell type may take half a minute), then
    ``rounds`` rounds of one call each in a shuffled order, with T chosen so
    that the timed calls take about ``seconds`` in all. The candidate with the
    least median time over the rule's choice (paired within each round)
    replaces the rule's if it is below ``1 - margin``. With ``save`` (the
    default) the result is written to :func:`calibration_path` under the
    model's class (:func:`class_key`), and from then on every Sequence of
    that class with automatic ``lanes`` and ``unit_threads`` takes it
    (``Sequence.describe_split`` says so).

    Example::

        result = mb.calibrate(mb.Sequence(mb.LSTM(64, 256), output_size=16), batch=16)
        print(result)   # calibrated lanes=1,unit_threads=1 (the rule's: unit_threads=2) ...
    """
    from ._model import Sequence
    from . import _split
    if not isinstance(model, Sequence):
        raise TypeError(f"calibrate: model must be an mb.Sequence, got {type(model).__name__}")
    _positive(batch, "batch", True, "the batch the model will train on")
    _positive(seconds, "seconds", False, "the time the timed calls may take, e.g. 3.0")
    _positive(rounds, "rounds", True, "timed rounds, e.g. 5")
    batch, rounds, seconds = int(batch), int(rounds), float(seconds)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ValueError(f"calibrate: margin={margin!r} must be a number in [0, 1), e.g. 0.05")
    if model.lanes is not None or model.unit_threads is not None:
        raise ValueError(f"calibrate: {model!r} asks for its split (lanes= or unit_threads=), which a "
                         "calibration never overrides; pass the model with both left automatic (None)")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"calibrate: dtype={dtype!r} must be float32 or float64")
    path = calibration_path()
    if save and path is None:
        raise ValueError("calibrate: MEMOPT_BPTT_CALIBRATION=off, so nothing could be kept; unset it, or "
                         "pass save=False to only measure")
    start = time.perf_counter()
    rule_split = _split.rule_split(model, batch)
    rule = _name(*rule_split)
    cands = candidates(model, batch)
    cands.setdefault(rule, rule_split)
    models = {c: _with_split(model, *lu) for c, lu in cands.items()}  # each asks for its split explicitly
    if len(models) == 1:  # nothing to choose between: keep the rule's, untimed
        T, rounds, seconds_of, over = 0, 0, {}, {rule: 1.0}
    else:
        T, seconds_of, over = _time(models, rule, model, batch, dt, seed, seconds, rounds)
    chosen = pick(over, rule, margin)
    key = class_key(model, batch)
    result = Calibration(*cands[chosen], rule, chosen, T, rounds, seconds_of, over, time.perf_counter() - start,
                         path or "", key)
    if save:
        _save(path, key, _entry(result, model, batch, dt))
    return result


def _time(models: dict, rule: str, model: Any, batch: int, dt: np.dtype, seed: int,
          seconds: float, rounds: int) -> tuple[int, dict, dict]:
    """T, every candidate's median seconds and its median time over the rule's (see calibrate)."""
    from ._value_and_grad import value_and_grad
    params = model.init_params(seed=seed, dtype=dt)

    def call(c: str, T: int) -> float:
        xs, ys = data[T]
        t0 = time.perf_counter()
        value_and_grad(models[c], params, xs, ys)
        return time.perf_counter() - t0

    T0 = 32
    data = {T0: _data(model, T0, batch, dt, seed)}
    for c in models:  # warm-up: compile or load every candidate
        call(c, T0)
    per_step = min(call(rule, T0), call(rule, T0)) / T0
    # pauses not counted; plain BPTT's states and the data within DATA_BYTES
    step_bytes = (model.sizes(batch=batch, dtype=dt).internal_len * dt.itemsize
                  + data[T0][0][0].nbytes + data[T0][1][0].nbytes)
    T = int(min(2000, DATA_BYTES // step_bytes, max(T0, seconds / (rounds * len(models) * per_step))))
    T = max(T, T0)
    data[T] = _data(model, T, batch, dt, seed)
    order = list(models)
    times: dict[str, list[float]] = {c: [] for c in models}
    shuffle = random.Random(seed)
    call(rule, T)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for c in order:
            time.sleep(PAUSE)  # the previous call's spinning BLAS workers go to sleep
            times[c].append(call(c, T))
    over = {c: statistics.median(t / r for t, r in zip(times[c], times[rule])) for c in models}
    return T, {c: statistics.median(v) for c, v in times.items()}, over


def _entry(result: Calibration, model: Any, batch: int, dt: np.dtype) -> dict:
    return {"lanes": result.lanes, "unit_threads": result.unit_threads, "rule": result.rule,
            "chosen": result.chosen, "T": result.T, "over_rule": result.over_rule, "seconds": result.seconds,
            "model": repr(model), "batch": int(batch), "dtype": dt.name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _save(path: str, key: str, entry: dict) -> None:
    """Add or replace one entry, atomically (a reader sees the old file or the new)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    entries = dict(_entries(path))
    entries[key] = entry
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".calibration-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _LOADED.update(path=None, mtime=None, entries={})


_TRIED: set = set()


def calibrate_if_asked(model: Any, batch: int, dtype: Any) -> None:
    """With ``MEMOPT_BPTT_CALIBRATION_AUTO=1``: calibrate this model's class
    now if it has no entry yet (once per class and process, whatever the
    outcome; a failure warns and leaves the rule's split)."""
    if os.environ.get("MEMOPT_BPTT_CALIBRATION_AUTO", "").strip().lower() not in ("1", "on", "yes", "true"):
        return
    if model.lanes is not None or model.unit_threads is not None:
        return
    path = calibration_path()
    if path is None:
        return
    key = class_key(model, batch)
    if key in _TRIED or key in _entries(path):
        return
    _TRIED.add(key)
    import sys
    print(f"memopt_bptt: calibrating the split of {model!r} at batch {batch} on this machine, once "
          f"(MEMOPT_BPTT_CALIBRATION_AUTO=1; kept in {path})", file=sys.stderr, flush=True)
    try:
        calibrate(model, batch, dtype=dtype)
    except (MemoryError, OSError, ValueError) as e:
        warnings.warn(f"memopt_bptt: calibrating {model!r} at batch {batch} failed ({type(e).__name__}: {e}); "
                      "the split rule is used", RuntimeWarning, stacklevel=3)
