"""The errors stacnas raises on purpose. The command line prints these as one line with their exit code; any other
exception is a bug and ends in a traceback (exit 1)."""
from __future__ import annotations

import sys


class StacnasError(Exception):
    """Base of stacnas' own errors; `exit_code` is what the command line exits with."""

    exit_code = 1


class UsageError(StacnasError, ValueError):
    """Bad input: an option, a file, an argument. The message names it and says what to do (exit 2)."""

    exit_code = 2


class DivergedError(StacnasError):
    """Training produced a non-finite loss, gradient or α: the run stops, its last good checkpoint kept (exit 3)."""

    exit_code = 3


class Interrupted(StacnasError):
    """SIGINT or SIGTERM: the run checkpointed where it stood and stopped; --resume continues it (exit 130, 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def warn(message: str) -> None:
    """Something is off but the run can go on: one line on stderr."""
    print(f"stacnas: warning: {message}", file=sys.stderr, flush=True)
