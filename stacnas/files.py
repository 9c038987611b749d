"""Reading a user's files with errors that name them, and writing a run's files so that an interruption at any
moment leaves either the old file or the new one, never half of one: written to a temporary file beside it,
flushed to disk (fsync), renamed over it, and the folder's entry flushed too."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from .errors import UsageError


def read_text(path: str | Path, what: str) -> str:
    """The text of a user's file; a missing, unreadable or undecodable file is a UsageError naming it as `what`."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be read ({err.strerror or err})") from None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically and durably."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to disk (a kill can still tear the last line: readers must expect that)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
