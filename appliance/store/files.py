"""Atomic file replacement: a reader sees the old content or the new, never a mix.

`atomic_write` writes a temporary file next to the target, fsyncs it, renames it over the
target with `os.replace` and fsyncs the directory, so the rename itself survives a power cut.
It is synchronous and blocking: callers on the event loop run it with `asyncio.to_thread`.
It must not write the target in place, and it leaves no temp file behind when it fails: only a
SIGKILL or power cut mid-write can leave a `.<name>.*.tmp` beside the intact target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from appliance.store.errors import AtomicWriteError

_TEMP_SUFFIX = ".tmp"
_UNCHANGED = "the previous content is unchanged"


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically and durably; `mode` is set exactly (no umask)."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    except OSError as err:
        raise _write_error(path, err, _UNCHANGED) from err
    with _removed_on_failure(path, temp):
        _write_fd(fd, data, mode)
        os.replace(temp, path)
    try:
        _fsync_directory(path.parent)
    except OSError as err:
        raise _write_error(path, err, "the new content may not survive a power cut") from err


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644, encoding: str = "utf-8") -> None:
    """Replace `path` with `text` atomically and durably."""
    atomic_write(path, text.encode(encoding), mode=mode)


@contextlib.contextmanager
def _removed_on_failure(path: Path, temp: str) -> Iterator[None]:
    """Remove `temp` if the block fails; report an OSError as an `AtomicWriteError`."""
    try:
        yield
    except OSError as err:
        _remove_quietly(temp)
        raise _write_error(path, err, _UNCHANGED) from err
    except BaseException:
        _remove_quietly(temp)
        raise


def _write_fd(fd: int, data: bytes, mode: int) -> None:
    """Write all of `data` to `fd`, set its mode, fsync and close it."""
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fchmod(file.fileno(), mode)
        os.fsync(file.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(temp: str) -> None:
    """Remove a temp file if it is still there."""
    with contextlib.suppress(OSError):
        os.unlink(temp)


def _write_error(path: Path, err: OSError, outcome: str) -> AtomicWriteError:
    """The error for a failed write of `path`, saying what state the file is in."""
    reason = err.strerror or repr(err)
    return AtomicWriteError(f"Could not write {path} atomically ({reason}); {outcome}.")
