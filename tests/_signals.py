"""Helpers for tests that send real signals to child processes."""

import signal


def default_sigint() -> None:
    """In a child before exec (``preexec_fn``): SIGINT's default action, whatever this process
    inherited. A shell without job control starts background jobs with SIGINT ignored, and
    Python keeps an ignored SIGINT ignored (no KeyboardInterrupt): a test run started that way
    would otherwise see no Ctrl-C reach its children at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
