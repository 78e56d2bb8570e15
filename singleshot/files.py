"""Atomic file writes: a reader, or a crash, sees either the old file or the new one, never half of it.

::

    atomic_write("model.onnx", lambda f: onnx.save_model(proto, f))
    atomic_write("curves.png", lambda f: fig.savefig(f, format="png"))
    write_text_atomic("summary.md", text)

The content goes to a temporary file in the same folder (so that the rename stays on one file system),
is flushed and synced to disk, then renamed over ``path`` with ``os.replace``. On any failure the
temporary file is removed and ``path`` is left as it was. The new file gets the permissions of a file
made with ``open(path, "w")``: ``0o666`` less the umask (``0o644`` under the usual umask ``0o022``),
not the ``0o600`` of :func:`tempfile.mkstemp`. The folder of ``path`` must exist.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write`` with a binary file object, then put what it wrote at ``path`` in one rename.

    Args:
        path: the file to create or replace; its folder must exist.
        write: writes the whole content into the file object it is given (it need not close it).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises whatever ``write`` raises, or the ``OSError`` of a failed write or rename; ``path`` is then
    untouched and no temporary file is left behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # reopened by name below, so that ``f.name`` is a path (onnx.save_model reads it)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's permissions
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` (encoded with ``encoding``) to ``path`` with :func:`atomic_write`."""
    return write_bytes_atomic(path, text.encode(encoding))


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
