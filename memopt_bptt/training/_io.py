"""Parameter files: ``.npz`` archives of named arrays, written atomically.

:func:`save_params` writes to a temporary file in the target's folder and
renames it into place, so a crash never leaves a half-written file under the
name; the file keeps the mode of the one it replaces (a new one gets the
umask's), errors name the caller's path, and temporary files a killed save
left behind (``.NAME.PID.XXXXXXXX.memopt-tmp``, PID no longer running) are
removed by the next save of that name. :func:`load_params` turns every way a
file can fail to be a params archive into one ValueError naming the file,
and checks names and shapes against a model when given one, listing every
mismatch at once.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from .._model import Sequence

__all__ = ["save_params", "load_params"]

Params = dict[str, np.ndarray]

TMP_SUFFIX = ".memopt-tmp"
"""The end of save_params' temporary files' names: ``.NAME.PID.XXXXXXXX.memopt-tmp``."""


def save_params(path: str | os.PathLike, params: Mapping[str, np.ndarray]) -> None:
    """Write params to an ``.npz`` file at exactly ``path``, atomically.

    The arrays go to a temporary file in the same directory, which then
    replaces ``path`` (``os.replace``), so a crash never leaves a half-written
    file under that name. A replaced file's permission bits are kept; a new
    file gets the umask's (like ``open(path, "w")``). A temporary file of
    this name left by a save that was killed is removed first.

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
    prefix = "." + os.path.basename(path)[:100] + "."  # 100: the whole name stays within NAME_MAX
    _remove_stale(directory, prefix)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _naming(exc, path) from None
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        # 0o666: the kernel applies the umask, as for any new file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            np.savez(fh, **params)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _naming(exc, path) from None
        raise


def _naming(exc: OSError, path: str) -> OSError:
    """The same kind of OSError (errno), naming the caller's path instead of a temporary one."""
    return OSError(exc.errno, f"save_params: cannot write {path!r} ({exc.strerror or errno.errorcode.get(exc.errno)})")


def _remove_stale(directory: str, prefix: str) -> None:
    """Remove ``prefix + PID.XXXXXXXX.memopt-tmp`` files whose process is gone: what a killed save left."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return  # the save itself will say what is wrong with the folder
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
            continue
        pid = name[len(prefix): -len(TMP_SUFFIX)].split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            try:
                os.unlink(entry.path)
            except OSError:
                pass


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be saving right now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process: not ours to judge
    return True


def load_params(path: str | os.PathLike, model: Sequence | None = None) -> Params:
    """Read params written by :func:`save_params` (or any ``.npz`` of arrays).

    A file that is not an ``.npz`` archive of numeric arrays (a single
    ``.npy`` array, a truncated or corrupted archive, anything else) raises
    one ValueError naming the file and what is wrong. With ``model``, the
    names and shapes must match ``model.param_shapes``; otherwise a
    ValueError lists every missing, unexpected and mis-shaped entry.

    Example::

        params = mb.load_params("lstm.npz", model)
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:  # a missing or unreadable file: FileNotFoundError / PermissionError
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise ValueError(f"load_params: {path!r} is a single array (.npy), not an .npz archive of named arrays; "
                         "write params with mb.save_params (or np.savez)")
    if not magic.startswith(b"PK"):
        raise ValueError(f"load_params: {path!r} is not an .npz archive (it does not begin as a zip file does); "
                         "write params with mb.save_params (or np.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            params = {k: np.array(npz[k]) for k in npz.files}
    except (ValueError, EOFError, OSError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"load_params: {path!r} is truncated or corrupted, or holds something other than "
                         f"numeric arrays ({type(exc).__name__}: {exc})") from None
    if not params:
        raise ValueError(f"load_params: {path!r} holds no arrays")
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
        raise ValueError(f"load_params: {path!r} does not fit {model!r}: " + "; ".join(problems))
    model.check_params(params, where="load_params")
    return {k: params[k] for k in expected}
