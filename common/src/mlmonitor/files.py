"""Files replaced whole (the model card and artifact, the drift monitor's state), and how a reader
tells that one was replaced."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, fsync: bool = True) -> None:
    """Temporary file, fsync, rename, fsync of the folder: `path` holds the old bytes or the new,
    after a crash too (with `fsync`)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


FileSignature = tuple[int, int, int]  # (inode, mtime_ns, size)


def file_signature(path: Path) -> FileSignature | None:
    """What tells a replaced or rewritten file from the one read before: None while there is none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size
