"""The errors stacnas raises on purpose. The command line prints these as one line with their exit code; any other
exception is a bug and ends in a traceback (exit 1)."""
from __future__ import annotations

import re
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


class StorageError(StacnasError):
    """A file could not be written (the disk full, the folder not writable): nothing half-written is left and the
    files before it stay, so the same command (with --resume for a run) goes on once that is fixed (exit 4)."""

    exit_code = 4


class OutOfMemory(StacnasError):
    """The CPU's or the GPU's memory ran out: what ran out, how much was asked, and what to do (exit 5)."""

    exit_code = 5


def as_out_of_memory(err: BaseException) -> OutOfMemory | None:
    """PyTorch's out-of-memory errors (torch.OutOfMemoryError on CUDA, a RuntimeError from the CPU allocator) as
    one line; None for anything else."""
    text = str(err)
    cuda = type(err).__name__ == "OutOfMemoryError"
    if not cuda and not (isinstance(err, RuntimeError) and re.search(r"can't allocate memory|not enough memory", text)):
        return None
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    amount = f"{int(asked.group(1)) / 2**30:.2f} GiB" if asked else None
    if amount is None:
        asked = re.search(r"tried to allocate ([\d.]+ [KMGT]i?B)", text, re.I)
        amount = asked.group(1) if asked else "an unknown amount"
    where = "GPU" if cuda or "CUDA" in text else "CPU"
    return OutOfMemory(f"out of {where} memory: a tensor of {amount} did not fit; use a smaller --batch-size (or "
                       "--channels, --layers), or --memory-mode recompute for a search")


class Interrupted(StacnasError):
    """SIGINT or SIGTERM: the run checkpointed where it stood and stopped; --resume continues it (exit 130, 143)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def warn(message: str) -> None:
    """Something is off but the run can go on: one line on stderr."""
    print(f"stacnas: warning: {message}", file=sys.stderr, flush=True)
