"""An exclusive lock on a directory (a run, or one case of an experiment) for one process.

:func:`directory_lock` takes ``fcntl.flock`` on ``FOLDER/.lock`` and writes the holder's
record into it (JSON: ``pid``, ``host``, ``started`` in UTC, ``command``); a second process
asking for the same folder stops at once with a :class:`LockHeld` naming that holder.
The kernel drops a flock when its process dies (killed or not), so a lock left by a dead
process is simply free again: the next process takes it over, and says so when the record
names another holder. The lock file is kept (emptied on release): deleting it would let two
processes lock two different files of the same name.

Across hosts it holds as far as flock does on the shared filesystem: NFS (Linux >= 2.6.12,
where flock is a whole-file POSIX lock), Lustre and GPFS mounted with flock support lock
for every host. Where the filesystem refuses flock (``ENOLCK``, ``EOPNOTSUPP``), the record
alone decides: a holder on this host whose pid is alive, or a holder on another host
(whose liveness cannot be checked here), refuses the lock; a holder on this host whose pid
is gone is stale and taken over. A mount that keeps flock local to each host (NFS
``local_lock=flock``) cannot see another host's lock.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(RuntimeError):
    """The folder is locked by another live process; the message names it."""


@dataclass(frozen=True)
class LockInfo:
    """This process's hold on ``folder``: ``started`` is a POSIX time; ``taken_over`` the
    record of a dead holder found in the lock file (or ``None``)."""

    folder: Path
    path: Path
    started: float
    taken_over: dict[str, Any] | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}
    return record if isinstance(record, dict) else {"unreadable": text[:80]}


def describe_holder(record: dict[str, Any] | None) -> str:
    """``process 123 on host h since 2025-01-01T00:00:00Z`` (or what is known of it)."""
    if not record:
        return "another process (no record yet)"
    if "unreadable" in record:
        return f"another process (unreadable lock record {record['unreadable']!r})"
    return (f"process {record.get('pid', '?')} on host {record.get('host', '?')} "
            f"since {record.get('started', '?')}")


def _held_message(folder: Path, path: Path, record: dict[str, Any] | None) -> str:
    return (f"{folder} is in use by {describe_holder(record)} (lock {path}); wait for it to "
            "finish, or stop it, or choose another directory")


def _record_is_stale(record: dict[str, Any] | None, host: str) -> bool:
    """Without flock: may a process take over the lock this record describes?"""
    if not record or "unreadable" in record:
        return True
    if record.get("host") != host:
        return False  # cannot tell whether a process on another host is alive
    pid = record.get("pid")
    return not (isinstance(pid, int) and (pid == os.getpid() or _pid_alive(pid)))


@contextmanager
def directory_lock(folder: str | Path) -> Iterator[LockInfo]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    Raises :class:`LockHeld` at once (no waiting) if another live process holds it; takes
    over a lock whose holder is dead. The same function locks a run directory and each case
    directory of an experiment.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            have_flock = True
        except BlockingIOError:
            raise LockHeld(_held_message(folder, path, _read_record(path))) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            have_flock = False
        previous = _read_record(path)
        if not have_flock and not _record_is_stale(previous, host):
            raise LockHeld(_held_message(folder, path, previous))
        now = datetime.datetime.now(datetime.UTC)
        record = {"pid": os.getpid(), "host": host,
                  "started": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        acquired = True
        yield LockInfo(folder=folder, path=path, started=now.timestamp(), taken_over=previous)
    finally:
        try:
            if acquired:
                os.ftruncate(fd, 0)  # released: an empty record names no holder
        finally:
            os.close(fd)  # drops the flock


def check_unlocked(folder: str | Path) -> None:
    """Raise :class:`LockHeld` if another live process holds ``folder``'s lock now: a probe
    for a clear message before reading the folder. It changes nothing (a stale record is
    left for :func:`directory_lock` to take over and report)."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(_held_message(folder, path, _read_record(path))) from None
        except OSError as err:
            if err.errno not in _NO_FLOCK:
                raise
            record = _read_record(path)
            if not _record_is_stale(record, socket.gethostname()):
                raise LockHeld(_held_message(folder, path, record)) from None
    finally:
        os.close(fd)
