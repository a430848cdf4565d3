"""Safe output: atomic writes reach the disk (file and directory fsynced), one writer per directory."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import asr.atomic
from asr.atomic import atomic_open, atomic_path, write_text
from asr.errors import AsrError
from asr.lock import LOCK_NAME, hold


@pytest.fixture
def events(monkeypatch) -> list[tuple]:
    """Every fsync (with what its fd is: ``file`` + inode, or ``dir`` + inode) and replace, in order."""
    log: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        log.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst) -> None:
        log.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _expect_durable(events: list[tuple], target: Path) -> None:
    ino, dir_ino = target.stat().st_ino, target.parent.stat().st_ino
    assert events == [("fsync", "file", ino), ("replace", ino), ("fsync", "dir", dir_ino)]


def test_atomic_open_fsyncs_file_then_renames_then_fsyncs_dir(tmp_path, events):
    target = tmp_path / "out" / "text"
    with atomic_open(target) as f:
        f.write("u1 a b\n")
    assert target.read_text() == "u1 a b\n"
    _expect_durable(events, target)


def test_atomic_path_fsyncs_what_the_writer_wrote(tmp_path, events):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    events.clear()
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")  # a writer that closes the file without fsync, like torch.save
    assert target.read_bytes() == b"new"
    _expect_durable(events, target)


def test_no_rename_and_no_leftovers_when_the_writer_fails(tmp_path, events):
    target = tmp_path / "model.pt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == [] and not any(e[0] == "replace" for e in events)


def test_directory_fsync_refused_is_not_an_error(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")  # what some file systems answer for a directory
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_text(tmp_path / "wer", "%WER 0.00\n")
    assert (tmp_path / "wer").read_text() == "%WER 0.00\n"
    asr.atomic.fsync_dir(tmp_path / "no-such-dir")  # cannot even be opened: still quiet


# ------------------------------------------------------------------------------------------ lock

HOLDER = """
import sys
from asr.lock import hold
with hold(sys.argv[1], "asr train"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _start_holder(d: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_second_run_is_refused_naming_dir_and_holder(tmp_path):
    p = _start_holder(tmp_path)
    try:
        with pytest.raises(AsrError) as e, hold(tmp_path, "asr make-feats"):
            pass
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path}: another 'asr train' (pid {p.pid}) is writing here")
        assert "\n" not in msg
    finally:
        p.communicate("done\n", timeout=30)
    assert p.returncode == 0 and not (tmp_path / LOCK_NAME).exists()  # released and cleaned up
    with hold(tmp_path, "asr make-feats") as lock:
        assert lock.read_text() == f"{os.getpid()} asr make-feats\n"
    assert not lock.exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    p = _start_holder(tmp_path)
    p.kill()  # no cleanup runs: the .lock file stays, but the kernel dropped the flock
    p.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).exists()
    with hold(tmp_path, "asr train"):
        pass


FORKING_HOLDER = """
import os, sys, time
from asr.lock import hold
with hold(sys.argv[1], "asr make-feats"):
    worker = os.fork()  # like make-feats --nj: workers forked while the lock is held
    if worker == 0:
        time.sleep(120)
        os._exit(0)
    print(worker, flush=True)
    sys.stdin.readline()
"""


def test_a_forked_worker_does_not_keep_a_dead_holders_lock(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", FORKING_HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    worker = int(p.stdout.readline())
    try:
        with pytest.raises(AsrError, match=f"pid {p.pid}"), hold(tmp_path, "asr make-feats"):
            pass
        p.kill()
        p.wait(timeout=30)
        os.kill(worker, 0)  # still alive, with its copy of the lock's fd closed at fork
        with hold(tmp_path, "asr make-feats"):
            pass
    finally:
        p.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_lock_is_per_open_file_so_one_process_cannot_take_it_twice(tmp_path):
    with hold(tmp_path, "asr make-feats"):
        errors: list[Exception] = []

        def second() -> None:
            try:
                with hold(tmp_path, "asr make-feats"):
                    pass
            except AsrError as e:
                errors.append(e)

        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert len(errors) == 1 and f"(pid {os.getpid()})" in str(errors[0])
        assert str(tmp_path) in str(errors[0])
    with hold(tmp_path, "asr make-feats"):  # free again after the first one left
        pass


def test_lock_needs_an_existing_dir(tmp_path):
    with pytest.raises(AsrError, match="not a directory"), hold(tmp_path / "nope", "asr train"):
        pass
