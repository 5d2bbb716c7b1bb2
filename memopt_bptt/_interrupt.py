"""Ctrl-C while jitted code runs: the work on threads, the caller waiting where signals reach it.

Python runs a signal handler only in the main thread, between bytecodes: a
SIGINT that arrives while that thread is inside a long jitted call (a sweep,
a planner table, or Numba compiling one, whose llvmlite callbacks swallow
it) is seen late or not at all. So long jitted work runs on a worker
thread, and the calling thread waits in short joins, where a
KeyboardInterrupt is raised at once; it then asks the work to stop (the
sweeps poll a flag at every step) and re-raises.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

__all__ = ["call_interruptibly", "run_interruptibly"]


def run_interruptibly(threads: list, stop: Callable[[], None], *, grace: float = 1.0) -> None:
    """Start ``threads`` and wait for them in short joins, so Ctrl-C reaches the
    caller; on any exception here (KeyboardInterrupt), call ``stop()``, give the
    threads ``grace`` seconds to finish, and re-raise."""
    try:
        for th in threads:  # inside the try: Ctrl-C while a thread starts stops the ones started
            th.start()
        for th in threads:
            while th.is_alive():
                th.join(0.05)
    except BaseException:
        stop()
        deadline = time.monotonic() + grace
        for th in threads:
            if th.ident is not None:  # started
                th.join(max(0.0, deadline - time.monotonic()))
        raise


def call_interruptibly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a worker thread, its result or exception
    returned or raised here; Ctrl-C raises KeyboardInterrupt here within a
    twentieth of a second. Work that cannot be asked to stop (a planner
    table) finishes on its thread, its result dropped."""
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)  # signals only reach the main thread: nothing to gain
    box: list = []

    def work() -> None:
        try:
            box.append((True, fn(*args, **kwargs)))
        except BaseException as exc:  # re-raised by the caller
            box.append((False, exc))

    run_interruptibly([threading.Thread(target=work, daemon=True)], lambda: None, grace=0.0)
    ok, value = box[0]
    if ok:
        return value
    raise value
