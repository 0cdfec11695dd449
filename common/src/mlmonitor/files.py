"""Files replaced whole: the model card and artifact, the drift monitor's state."""

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
