"""One training run per workdir: `<workdir>/train.lock` holds the owner's pid, host and start time.

The lock is taken by creating the file exclusively (O_CREAT | O_EXCL), so of
two runs started together exactly one gets it. A lock left by a run that
died without releasing it (kill -9, a crashed VM) is stale when it names this
host and a pid that no longer runs (or runs a process started at another
time: the pid was reused); a stale lock is replaced, saying so. A lock of
another host cannot be checked from here: the run is refused with the
holder's details and the file to delete if that run is gone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time

from gpg_em.errors import RunStopped

log = logging.getLogger(__name__)
LOCK_NAME = "train.lock"


class WorkdirBusy(RunStopped):
    """Another live run holds the workdir."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def owner() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid), "time": time.time()}


def is_stale(holder: dict) -> bool:
    """True when `holder` is a process of this host that is no longer running."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    return holder.get("start") is not None and _process_start(pid) != holder.get("start")


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["time"])) if "time" in holder else "?"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {since})"


class WorkdirLock:
    """Context manager: holds `<workdir>/train.lock` for the duration of a run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(owner(), f)
        return True

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # unreadable, or being written right now: treated as held

    def acquire(self) -> None:
        for _ in range(3):  # a stale lock removed by us may be re-taken by a concurrent run in between
            if self._create():
                self.held = True
                return
            holder = self._holder()
            if holder and is_stale(holder):
                log.warning("%s: removing the stale lock of %s, which is no longer running", self.path,
                            _describe(holder))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            break
        who = _describe(holder) if holder else "a run whose lock file is being written or is unreadable"
        raise WorkdirBusy(f"{os.path.dirname(self.path)}: in use by {who}; wait for it, use another --workdir, "
                          f"or delete {self.path} if that run is no longer running")

    def release(self) -> None:
        if self.held and self._holder().get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
