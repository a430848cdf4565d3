"""One writer per directory: ``with hold(dir, "asr make-feats"):`` refuses to start a second one.

Two runs writing the same data or model dir would interleave their files (one's ``feats.ark`` under
the other's ``feats.scp``). ``hold`` takes an exclusive, non-blocking ``flock`` on ``DIR/.lock`` and
writes the holder's pid and command into it, so the refused run can say who is there.

The kernel drops a ``flock`` when its process dies, however it dies, so a killed run never leaves a
stale lock to clean up: a leftover ``.lock`` file is just an empty, unlocked file. ``flock`` belongs
to an open file description, so a second ``open`` of the file is refused even in the same process.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from asr.errors import AsrError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not made exclusive
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
_held: set[int] = set()  # fds of the locks this process holds


def _close_in_child() -> None:
    # A forked worker (make-feats --nj) would otherwise keep its parent's lock alive after the parent
    # died. Closing a copy of the fd does not unlock: the parent's fd still refers to the same lock.
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _holder(path: Path) -> str:
    """``'asr make-feats' (pid 1234)`` from the lock file, or a vaguer phrase while it is being written."""
    try:
        pid, _, what = path.read_text(encoding="utf-8", errors="replace").strip().partition(" ")
    except OSError:
        pid, what = "", ""
    if pid.isdigit():
        return f"'{what or 'asr'}' (pid {pid})"
    return "process"


def _acquire(path: Path, what: str) -> int:
    """An fd of ``path`` that this process holds the flock on; AsrError if another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise AsrError(f"{path}: cannot create the lock file: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AsrError(f"{path}: cannot lock: {e.strerror or e}") from None
            d = path.parent
            raise AsrError(f"{d}: another {_holder(path)} is writing here; wait for it to finish, then retry "
                           f"(nothing to remove: the lock goes away with that process)") from None
        # The previous holder unlinks the file on release; if it did so between our open and our
        # flock we hold a lock on a file nobody else can see, while a newcomer creates a fresh one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {what}\n".encode())
    return fd


@contextlib.contextmanager
def hold(directory: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``directory``'s lock for the ``with`` block; ``what`` names the command in the refusal.

    The directory must exist. Raises AsrError naming the directory and the holder's pid and command
    when another run holds it. Yields the lock file's path.
    """
    d = Path(directory)
    if not d.is_dir():
        raise AsrError(f"{d}: not a directory")
    path = d / LOCK_NAME
    if fcntl is None:
        yield path
        return
    fd = _acquire(path, what)
    _held.add(fd)
    try:
        yield path
    finally:
        _held.discard(fd)
        # Unlinking while still holding the lock keeps the directory clean; _acquire's samestat check
        # makes this safe against a run that opened the old file just before.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
