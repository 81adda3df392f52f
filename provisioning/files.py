"""Atomic file writes for keys, certificates and configs: temp file, fsync, rename.

Private keys are created with their final mode (0600) from the first byte, so they are never
readable by others, not even for a moment. Blocking I/O: call it from a thread in async code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from appliance.errors import ApplianceError

PRIVATE = 0o600
PUBLIC = 0o644


class FileExists(ApplianceError, FileExistsError):
    """A file the command would write exists already; nothing was changed."""

    code = "file_exists"


def refuse_existing(paths: list[Path], *, force: bool) -> None:
    """FileExists naming the first of `paths` that exists, unless `force`."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise FileExists(f"{path} exists; nothing was written (pass --force to replace it)")


def write_atomic(path: Path, data: bytes, *, mode: int, force: bool = False) -> None:
    """Write `data` to `path` with `mode` atomically; FileExists unless `force`."""
    refuse_existing([path], force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared in the meantime: never overwrite by accident.
            try:
                os.link(tmp, path)
            except FileExistsError as err:
                raise FileExists(f"{path} appeared while writing; it was left as it is") from err
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
