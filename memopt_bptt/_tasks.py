"""Synthetic and small text tasks for trying the library (no downloads).

* :func:`adding_problem` -- Hochreiter & Schmidhuber (1997), in the form of
  Le, Jaitly & Hinton (2015): add the two marked numbers of a long sequence.
* :func:`copy_task` -- the copy-memory problem (Hochreiter & Schmidhuber
  1997; Arjovsky, Shah & Bengio 2016): reproduce a few symbols after a long
  blank delay.
* :func:`char_lm` -- next-character prediction on a public-domain text shipped
  with the package (the opening chapter of Lewis Carroll's "Alice's
  Adventures in Wonderland", 1865), as one-hot inputs or token ids.
* :func:`frequency_classification` -- many-to-one: name the frequency of a
  noisy sine wave seen one sample per step, in a batch of variable lengths.

Every task is a pure function of its arguments and ``seed``: the same call
gives the same arrays, bit for bit. Shapes follow the library's layout:
inputs (T, batch, input_size), targets (T, batch, output_size) for
``loss="mse"`` or integer labels (T, batch) for ``loss="cross_entropy"``.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np


__all__ = ["adding_problem", "copy_task", "char_lm", "frequency_classification", "load_text", "TEXT_FILE"]

TEXT_FILE = "alice_ch1.txt"


def _positive_int(value: Any, *, name: str, where: str, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name}={value!r} must be an int >= {least}")
    if value < least:
        raise ValueError(f"{where}: {name}={value!r} must be an int >= {least}")
    return int(value)


def _float_dtype(dtype: Any, *, where: str) -> np.dtype:
    """float32 or float64, the dtypes the library computes in."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{where}: dtype={dtype!r} is not a dtype; use 'float32' or 'float64'") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{where}: dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    return dt


def _seed(seed: Any, *, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"{where}: seed={seed!r} must be a non-negative int")
    return int(seed)


def adding_problem(T: int, batch: int, *, seed: int, dtype: Any = "float64") -> tuple[np.ndarray, np.ndarray]:
    """The adding problem: remember two marked numbers and report their sum.

    ``xs[t, b] = (value, marker)``: values are uniform in [0, 1); exactly two
    markers are 1 per sequence, one at a uniformly chosen step of the first
    half ``[0, T//2)`` and one of the second half ``[T//2, T)``; all other
    markers are 0.

    Targets. The library's loss is the mean over *all* steps, so a target that
    exists only at the last step would be drowned (and a final sum shown at
    every step would be unpredictable before the second marker). Here
    ``ys[t, b, 0]`` is the *running* sum of the marked values seen at steps
    ``<= t``: 0 before the first marker, the first marked value until the
    second marker, then the sum of both. It is causal, and
    ``ys[T - 1, b, 0]`` is the classic adding-problem target, so the error of
    the last step's prediction is the standard benchmark number. Predicting
    the running sum needs the first value to be held for up to T - 1 steps.

    Use with ``mb.Sequence(cell(input_size=2, ...), output_size=1, loss="mse")``.

    Example::

        xs, ys = mb.adding_problem(100, 16, seed=0)
        xs.shape, ys.shape    # (100, 16, 2), (100, 16, 1)
    """
    where = "adding_problem"
    T = _positive_int(T, name="T", where=where, least=2)
    batch = _positive_int(batch, name="batch", where=where)
    dt = _float_dtype(dtype, where=where)
    rng = np.random.default_rng(_seed(seed, where=where))
    half = T // 2
    values = rng.uniform(0.0, 1.0, size=(T, batch))
    first = rng.integers(0, half, size=batch)
    second = rng.integers(half, T, size=batch)
    markers = np.zeros((T, batch))
    cols = np.arange(batch)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    xs = np.stack([values, markers], axis=-1).astype(dt)
    # Sum the values as stored (after the cast), so the target is exact in dt.
    marked = xs[..., 0].astype(np.float64) * markers
    ys = np.cumsum(marked, axis=0)[..., None].astype(dt)
    return xs, ys


def copy_task(T: int, batch: int, *, n_symbols: int, seed: int, length: int = 10,
              dtype: Any = "float64") -> tuple[np.ndarray, np.ndarray]:
    """The copy-memory task: read ``length`` symbols, wait, then write them back.

    Classes: symbols are ``0 .. n_symbols-1``, ``blank = n_symbols``,
    ``delimiter = n_symbols + 1``. The input sequence (one-hot, width
    ``n_symbols + 2``) is ``length`` random symbols, then blanks, then the
    delimiter at step ``T - length - 1``, then ``length`` blanks. The labels
    (T, batch) are ``blank`` everywhere except the last ``length`` steps,
    which hold the symbols in their original order. A model that only learns
    to output blanks reaches a cross-entropy of about
    ``length * log(n_symbols) / T``; anything lower has memorised symbols.

    Use with ``mb.Sequence(cell(input_size=n_symbols + 2, ...),
    output_size=n_symbols + 1, loss="cross_entropy")``. Needs
    ``T >= 2 * length + 1``.

    Example::

        xs, ys = mb.copy_task(50, 8, n_symbols=8, seed=0)
        xs.shape, ys.shape    # (50, 8, 10), (50, 8)
    """
    where = "copy_task"
    T = _positive_int(T, name="T", where=where)
    batch = _positive_int(batch, name="batch", where=where)
    n_symbols = _positive_int(n_symbols, name="n_symbols", where=where)
    length = _positive_int(length, name="length", where=where)
    if T < 2 * length + 1:
        raise ValueError(f"{where}: T={T} is too short for length={length}; need T >= 2 * length + 1 = "
                         f"{2 * length + 1} (or pass a smaller length=)")
    dt = _float_dtype(dtype, where=where)
    rng = np.random.default_rng(_seed(seed, where=where))
    blank, delimiter = n_symbols, n_symbols + 1
    symbols = rng.integers(0, n_symbols, size=(length, batch))
    tokens = np.full((T, batch), blank, dtype=np.int64)
    tokens[:length] = symbols
    tokens[T - length - 1] = delimiter
    labels = np.full((T, batch), blank, dtype=np.int64)
    labels[T - length:] = symbols
    xs = np.zeros((T, batch, n_symbols + 2), dtype=dt)
    np.put_along_axis(xs, tokens[..., None], 1.0, axis=2)
    return xs, labels


@lru_cache(maxsize=1)
def load_text() -> str:
    """The shipped public-domain text (``memopt_bptt/data/alice_ch1.txt``),
    without its header line.

    Example::

        text = mb.load_text()
        text[:9]    # 'CHAPTER I'
    """
    raw = resources.files("memopt_bptt").joinpath("data", TEXT_FILE).read_text(encoding="utf-8")
    lines = raw.splitlines(keepends=True)
    # The first line(s) starting with "#" state the source and its public-domain status.
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def char_lm(T: int, batch: int, *, seed: int, dtype: Any = "float64",
            text: str | None = None, ids: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Next-character prediction: ``(xs, ys, vocab)`` from a text.

    ``vocab`` is the sorted string of the distinct characters of the text
    (the shipped chapter by default, see :func:`load_text`; or ``text=``).
    Each batch row is a window of ``T + 1`` consecutive characters starting
    at a random offset: ``xs`` (T, batch, len(vocab)) one-hot encodes
    characters ``0..T-1`` (with ``ids=True``: their indices, (T, batch)
    int64, for a model with an :class:`mb.Embedding <memopt_bptt.Embedding>`)
    and ``ys`` (T, batch) int64 holds the indices of characters ``1..T``
    (the next character at every step).

    Use with ``mb.Sequence(cell(input_size=len(vocab), ...),
    output_size=len(vocab), loss="cross_entropy")``, or with ``ids=True``
    ``mb.Sequence([mb.Embedding(len(vocab), dim), cell(dim, ...), ...], ...)``.

    Example::

        xs, ys, vocab = mb.char_lm(64, 8, seed=0)
        "".join(vocab[i] for i in ys[:, 0])   # 64 characters of the text
    """
    where = "char_lm"
    T = _positive_int(T, name="T", where=where)
    batch = _positive_int(batch, name="batch", where=where)
    dt = _float_dtype(dtype, where=where)
    rng = np.random.default_rng(_seed(seed, where=where))
    if text is None:
        text = load_text()
    elif not isinstance(text, str):
        raise TypeError(f"{where}: text must be a str, got {type(text).__name__}")
    if len(text) < T + 1:
        raise ValueError(f"{where}: the text has {len(text)} characters, fewer than T + 1 = {T + 1}; "
                         "use a smaller T or a longer text=")
    vocab = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocab]] = np.arange(len(vocab))
    codes = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    starts = rng.integers(0, len(text) - T, size=batch)  # window [s, s + T] fits
    idx = starts[None, :] + np.arange(T + 1)[:, None]     # (T + 1, batch)
    window = codes[idx]
    if ids:
        return np.ascontiguousarray(window[:-1]), np.ascontiguousarray(window[1:]), vocab
    xs = np.zeros((T, batch, len(vocab)), dtype=dt)
    np.put_along_axis(xs, window[:-1, :, None], 1.0, axis=2)
    ys = np.ascontiguousarray(window[1:])
    return xs, ys, vocab


def frequency_classification(T: int, batch: int, *, seed: int, n_classes: int = 4, noise: float = 0.2,
                             dtype: Any = "float64") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many-to-one classification of variable-length signals: ``(xs, ys, lengths)``.

    Sequence b is ``sin(2 pi f_c t / 16 + phase) + noise * N(0, 1)`` for its
    first ``lengths[b]`` steps (uniform in [T/2, T]) and zeros after (padding),
    with class ``c = ys[b]`` uniform in 0..n_classes-1 and frequency
    ``f_c = 1 + c`` cycles per 16 steps, a random phase per sequence. ``xs`` is
    (T, batch, 1), ``ys`` (batch,) int64 labels, ``lengths`` (batch,) int64.
    The class is a known, learnable function of the signal (a chance
    classifier scores 1 / n_classes).

    Use with ``mb.Sequence(cell(input_size=1, ...), output_size=n_classes,
    loss="cross_entropy", loss_at="last")`` and ``lengths=lengths``.

    Example::

        xs, ys, lengths = mb.frequency_classification(200, 16, seed=0)
    """
    where = "frequency_classification"
    T = _positive_int(T, name="T", where=where, least=2)
    batch = _positive_int(batch, name="batch", where=where)
    n_classes = _positive_int(n_classes, name="n_classes", where=where, least=2)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0 or noise == float("inf"):
        raise ValueError(f"{where}: noise={noise!r} must be a finite number >= 0")
    dt = _float_dtype(dtype, where=where)
    rng = np.random.default_rng(_seed(seed, where=where))
    ys = rng.integers(0, n_classes, size=batch).astype(np.int64)
    lengths = rng.integers(T // 2, T + 1, size=batch).astype(np.int64)
    lengths = np.maximum(lengths, 1)
    phase = rng.uniform(0.0, 2 * np.pi, size=batch)
    t = np.arange(T)[:, None]
    signal = np.sin(2 * np.pi * (1 + ys[None, :]) * t / 16.0 + phase[None, :])
    signal = signal + noise * rng.standard_normal((T, batch))
    signal[t >= lengths[None, :]] = 0.0
    return np.ascontiguousarray(signal[:, :, None], dtype=dt), ys, lengths
