"""Atomic, durable file writes and file hashes, for every layer.

A crash leaves either the old file or the new one, never a half-written one:
:func:`atomic_write_bytes` writes to a temporary file beside the target
(``.NAME.XXXX.tmp``), flushes it to disk (``fsync``) and renames it (``os.replace``);
with ``sync_folder`` (checkpoints, weights) the folder is flushed too, so the rename itself
survives a power cut. :func:`remove_stale_temporaries` deletes the temporaries a killed
write left behind. :func:`file_sha256` identifies model weights in checkpoints and cards.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's) data and metadata to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write: Callable[[Path], None], *,
                       sync_folder: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then
    ``os.replace`` it onto ``path``; with ``sync_folder`` also fsync the folder (use it for
    checkpoints and weights: the new name is then on disk when this returns).

    A crash leaves either the old file or the new one, never a half-written one (and at
    most a stray ``.NAME.*.tmp``, see :func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        fsync_path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_folder:
        fsync_path(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str, *, sync_folder: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, lambda tmp: tmp.write_text(text), sync_folder=sync_folder)


def remove_stale_temporaries(folder: str | Path, older_than: float, *,
                             recursive: bool = True) -> list[Path]:
    """Delete temporaries of atomic writes (``*.tmp``: :func:`atomic_write_bytes`'s
    ``.NAME.*.tmp`` and other writers') in ``folder`` (and its subfolders) last modified
    before ``older_than`` (a POSIX time, e.g. when this
    process took the folder's lock: a newer one may be another live writer's). Returns the
    files removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob("*.tmp") if recursive else folder.glob("*.tmp"):
        try:
            if p.is_file() and p.stat().st_mtime < older_than:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            continue
    return removed


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes (model weights)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
