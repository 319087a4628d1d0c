"""Errors the command line prints as one line (the traceback only with `--debug`).

`UserError`: bad input (a flag, a file, a workdir); exit status 2.
`RunStopped`: a run stopped itself so that nothing is lost or poisoned
(non-finite values, failing rewards, a busy workdir, a signal); exit status
`exit_code` (1, or 128 + the signal number after SIGTERM/SIGINT).
"""
from __future__ import annotations


class UserError(ValueError):
    """A flag, file or workdir the user gave cannot be used; the message says which and what was expected."""


class RunStopped(RuntimeError):
    """The run stopped on purpose; the message says why and what was kept."""
    exit_code = 1


class Interrupted(RunStopped):
    """SIGTERM/SIGINT: the run saved a checkpoint (or had nothing to save) and stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
