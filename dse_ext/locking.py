"""An exclusive lock on a results table, so that two writers never lose each other's rows.

``TableLock(path)`` holds an advisory ``flock`` on ``<path>.lock`` (POSIX) for as long as it is
entered. A second process asking for the same table is refused at once with
:class:`TableInUseError`, which names the process that holds it (PID and host, read from the
lock file). The kernel releases the lock when its holder exits, however it exits (SIGKILL
included), so a killed run never leaves a table locked: the next run simply takes the lock.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["TableInUseError", "TableLock", "lock_path"]


class TableInUseError(RuntimeError):
    """Another process is writing the same results table."""


def lock_path(table: str | os.PathLike) -> Path:
    table = Path(table)
    return table.with_name(f"{table.name}.lock")


class TableLock:
    """Context manager: the exclusive right to write ``table`` (see the module docstring)."""

    def __init__(self, table: str | os.PathLike):
        self.table = Path(table)
        self.path = lock_path(self.table)
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            raise RuntimeError("locking a results table needs a POSIX system (fcntl)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise TableInUseError(
                    f"{self.table} is in use by {holder} (another dse score writing the same table); "
                    "wait for it to finish or choose another output file") from None
            except BaseException:
                os.close(fd)
                raise
            # The holder before us may have removed the lock file between our open and our lock:
            # then we hold a lock on a file nobody else can see. Retry on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one can be between open and lock
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "TableLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
    except OSError:
        text = []
    if len(text) >= 2 and text[0].isdigit():
        return f"PID {text[0]} on host {text[1]}"
    if text and text[0].isdigit():
        return f"PID {text[0]}"
    return "another process"
