"""Reading a user's files with errors that name them, and writing a run's files so that an interruption at any
moment leaves either the old file or the new one, never half of one: written to a temporary file beside it,
flushed to disk (fsync), renamed over it, and the folder's entry flushed too. A write that fails (a full disk, a
folder made read-only) removes its temporary file, leaves the old file as it was and raises a StorageError naming
the file and its filesystem."""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import torch

from .errors import StorageError, UsageError


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


def storage_error(err: OSError, doing: str, folder: str | Path) -> StorageError:
    """The one-line error of a failed write ("writing <path>", "making the folder <path>") into `folder`: what ran
    out or refused, and what to do."""
    again = "then run the same command again (with --resume for a search or training)"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            where = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on the filesystem of {folder}"
        except OSError:
            where = f"on the filesystem of {folder}"
        return StorageError(f"no space left on device {doing} ({where}); free space, {again}")
    return StorageError(f"{err.strerror or err} {doing}; make {folder} writable, {again}")


def make_folder(path: str | Path) -> Path:
    """The folder, made with its parents where missing; failing: a StorageError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(err, f"making the folder {path}", _existing_parent(path)) from None
    return path


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        try:
            tmp.unlink(missing_ok=True)  # the bytes it holds may be the last free ones
        except OSError:
            pass
        raise storage_error(err, f"writing {path}", path.parent) from None


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically and durably."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str) -> None:
    """Append one line and flush it to disk (a kill or a full disk can still tear the last line: readers must expect
    that)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise storage_error(err, f"writing {path}", Path(path).parent) from None
