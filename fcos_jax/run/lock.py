"""WORKDIR/lock.json: one writer per workdir (train.py, fcos-convert).

The holder writes {host, pid, command, started, heartbeat, token} when it
starts, refreshes `heartbeat` every `heartbeat_s` seconds from a daemon
thread, and removes the file when it ends (normally, on an error, or on
SIGTERM). Another writer that finds the file is refused with one line
naming the holder, unless the lock is stale:
- the holder ran on this host and its pid is gone, or
- its heartbeat is older than `stale_after_s` (a holder on another host
  that died, or a lost machine);
a stale lock is taken over, and that is logged.

Creating the file is atomic where the storage allows it: O_CREAT|O_EXCL
locally, a create-only upload (ifGenerationMatch=0) on gs:// through gcsfs;
elsewhere the written token is read back after a short pause.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from fcos_jax import storage
from fcos_jax.errors import WorkdirLockedError

FILE = "lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# After an upload to a URL, the pause before the token is read back: the
# check that another writer's upload did not land over ours (needed where
# the store ignores the create-only precondition).
READ_BACK_PAUSE_S = 0.5
# A lock file that exists but does not parse is read again after this pause
# (another writer has created it and not yet written it) before it counts
# as an unknown, stale holder's.
UNREADABLE_PAUSE_S = 0.2


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, another user's.
    return True
  return True


def describe(holder: dict) -> str:
  return (f"{holder.get('command', 'a process')} (pid {holder.get('pid')} on "
          f"{holder.get('host')}, started {holder.get('started')})")


class WorkdirLock:
  """The lock of one workdir, held by this process between `acquire` and
  `release` (also a context manager)."""

  def __init__(self, workdir: str, command: str, *,
               heartbeat_s: float = HEARTBEAT_S,
               stale_after_s: float = STALE_AFTER_S):
    self.path = storage.join(str(workdir), FILE)
    self.workdir = str(workdir)
    self.command = command
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    self.token = uuid.uuid4().hex
    self._record = None
    self._stop = threading.Event()
    self._thread = None

  # --- Reading and writing the file -------------------------------------------

  def read(self) -> dict | None:
    """The current holder's record, or None when the workdir is not locked."""
    try:
      return json.loads(storage.read_text(self.path))
    except (FileNotFoundError, json.JSONDecodeError, ValueError):
      return None

  def _new_record(self) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "command": self.command,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "heartbeat": now, "token": self.token}

  def _create(self, record: dict) -> bool:
    """Writes the lock file if there is none; whether this call made it."""
    data = json.dumps(record).encode()
    if not storage.is_url(self.path):
      p = os.fspath(storage.path(self.path))
      os.makedirs(os.path.dirname(p) or ".", exist_ok=True)
      try:
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      return True
    if storage.exists(self.path):
      return False
    fs = _fsspec(self.path)
    if fs is not None:  # A create-only upload: GCS refuses a second one.
      try:
        fs.pipe_file(self.path, data, mode="create")
      except FileExistsError:
        return False
    else:
      storage.write_bytes_atomic(self.path, data)
    time.sleep(READ_BACK_PAUSE_S)  # Another writer's upload may land after ours.
    held = self.read()
    return held is not None and held.get("token") == self.token

  def _stale_reason(self, holder: dict) -> str | None:
    if holder.get("token") == self.token:
      return None
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname() and not _pid_alive(
        int(holder.get("pid", -1))):
      return f"its process {holder.get('pid')} is gone"
    if age > self.stale_after_s:
      return (f"its heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} "
              "s)")
    return None

  # --- Holding -----------------------------------------------------------------

  def acquire(self) -> "WorkdirLock":
    """Takes the lock, or raises WorkdirLockedError naming the holder."""
    for _ in range(3):
      record = self._new_record()
      if self._create(record):
        self._record = record
        self._start_heartbeat()
        return self
      holder = self.read()
      if holder is None:  # Released meanwhile, or being written: try again.
        if not storage.exists(self.path):
          continue
        time.sleep(UNREADABLE_PAUSE_S)  # Created, not yet filled?
        holder = self.read() or {
            "command": "an unknown process", "pid": "?", "host": "?",
            "started": "?", "heartbeat": 0}
      reason = self._stale_reason(holder)
      if reason is None:
        raise WorkdirLockedError(
            f"{self.workdir} is in use by {describe(holder)}: one process "
            f"writes a workdir at a time. Wait for it to end, or use another "
            f"--workdir (if it is dead, remove {self.path}).")
      logging.warning("Taking over the lock of %s from %s: %s.", self.workdir,
                      describe(holder), reason)
      self._remove_stale(holder.get("token"))
    raise WorkdirLockedError(
        f"Could not take the lock {self.path} (other processes keep taking "
        "it); use another --workdir.")

  def _remove_stale(self, token) -> None:
    """Removes the lock file if it still holds the stale `token`. Locally,
    take-overs hold an flock on the workdir folder meanwhile: two of them
    at once could otherwise both read the stale lock, and the slower one
    remove the lock the faster one had just made (a creator cannot slip in
    between the read and the removal: the stale file is still there). On a
    URL the file is read, then removed."""
    if storage.is_url(self.path):
      self._remove_if(token)
      return
    fd = os.open(os.path.dirname(os.fspath(storage.path(self.path))),
                 os.O_RDONLY)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)  # Released with the descriptor.
      self._remove_if(token)
    finally:
      os.close(fd)

  def _remove_if(self, token) -> None:
    held = self.read()
    if held is not None and held.get("token") == token:
      try:
        storage.path(self.path).unlink()
      except FileNotFoundError:
        pass

  def refresh(self) -> bool:
    """Rewrites the heartbeat; False (and logged) if the lock was taken."""
    held = self.read()
    if held is None or held.get("token") != self.token:
      logging.error("The lock %s is no longer ours (now %s).", self.path,
                    describe(held) if held else "absent")
      return False
    self._record = dict(self._record, heartbeat=time.time())
    storage.write_text_atomic(self.path, json.dumps(self._record))
    return True

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(self.heartbeat_s):
        try:
          if not self.refresh():
            return
        except Exception as e:  # A storage hiccup: the next beat retries.
          logging.warning("Could not refresh %s: %s", self.path, e)
    self._thread = threading.Thread(target=beat, name="workdir-lock",
                                    daemon=True)
    self._thread.start()

  def release(self) -> None:
    """Removes the lock file if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    if self._record is not None:
      self._record = None
      try:
        self._remove_if(self.token)
      except OSError as e:
        logging.warning("Could not remove %s: %s", self.path, e)

  def __enter__(self):
    return self.acquire() if self._record is None else self

  def __exit__(self, *exc):
    self.release()
    return False


def _fsspec(path: str):
  """gcsfs when epath reaches gs:// through it (create-only uploads)."""
  if not str(path).startswith("gs://") or storage.epath_uses_tf():
    return None
  try:
    from etils.epath import backend  # pylint: disable=import-outside-toplevel
    return backend.fsspec_backend.fs(str(path))
  except Exception:  # No gcsfs: the read-back check alone.
    return None
